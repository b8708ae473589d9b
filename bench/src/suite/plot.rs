//! SVG line plots of the suite's figures. plotters' SVG backend writes text as `<text>`
//! elements and lays it out with its built-in estimate, so no font or system library is
//! needed to draw or to build.

use std::path::Path;

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

/// One line of a plot.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend entry.
    pub name: String,
    /// Points, in x order.
    pub points: Vec<(f64, f64)>,
    /// Drawn dashed-looking (points only, no line): for bounds and baselines.
    pub reference: bool,
}

/// What to draw.
#[derive(Debug, Clone)]
pub struct Plot {
    /// Caption.
    pub title: String,
    /// X axis description.
    pub x_label: String,
    /// Y axis description.
    pub y_label: String,
    /// X on a logarithmic scale (packet sizes, appliance counts).
    pub log_x: bool,
    /// The lines.
    pub series: Vec<Series>,
}

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
    RGBColor(140, 86, 75),
    RGBColor(127, 127, 127),
];

impl Plot {
    /// Draws the plot as SVG into `path`. A plot without finite points is not drawn.
    pub fn draw(&self, path: &Path) -> Result<bool, String> {
        let points = self
            .series
            .iter()
            .flat_map(|s| &s.points)
            .filter(|(x, y)| x.is_finite() && y.is_finite() && (!self.log_x || *x > 0.0));
        let (mut x0, mut x1, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, 0.0f64);
        for &(x, y) in points {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y1 = y1.max(y);
        }
        if !x0.is_finite() {
            return Ok(false);
        }
        if x1 <= x0 {
            x1 = x0 + 1.0;
            x0 = if self.log_x { x0 / 2.0 } else { x0 - 1.0 };
        }
        let y1 = if y1 > 0.0 { y1 * 1.1 } else { 1.0 };
        let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut builder = ChartBuilder::on(&root);
        builder
            .caption(&self.title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(70);
        if self.log_x {
            let chart = builder
                .build_cartesian_2d((x0..x1).log_scale(), 0.0..y1)
                .map_err(|e| e.to_string())?;
            self.fill(chart)?;
        } else {
            let chart = builder
                .build_cartesian_2d(x0..x1, 0.0..y1)
                .map_err(|e| e.to_string())?;
            self.fill(chart)?;
        }
        root.present().map_err(|e| e.to_string())?;
        Ok(true)
    }

    fn fill<'a, X>(
        &self,
        mut chart: ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, RangedCoordf64>>,
    ) -> Result<(), String>
    where
        X: Ranged<ValueType = f64> + ValueFormatter<f64>,
        X: AsRangedCoord<CoordDescType = X, Value = f64>,
    {
        chart
            .configure_mesh()
            .x_desc(self.x_label.as_str())
            .y_desc(self.y_label.as_str())
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, series) in self.series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let points: Vec<(f64, f64)> = series
                .points
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect();
            let style = ShapeStyle::from(&color).stroke_width(if series.reference { 1 } else { 2 });
            chart
                .draw_series(LineSeries::new(points.clone(), style))
                .map_err(|e| e.to_string())?
                .label(series.name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            let marker = points
                .into_iter()
                .map(move |p| Circle::new(p, if series.reference { 2 } else { 3 }, color.filled()));
            chart.draw_series(marker).map_err(|e| e.to_string())?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plot_is_svg_with_its_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.svg");
        let plot = Plot {
            title: "throughput".into(),
            x_label: "bytes".into(),
            y_label: "Gbit/s".into(),
            log_x: true,
            series: vec![Series {
                name: "plain".into(),
                points: vec![(64.0, 1.0), (1400.0, 10.0)],
                reference: false,
            }],
        };
        assert!(plot.draw(&path).unwrap());
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80]);
        assert!(svg.contains(">\nthroughput\n</text>"), "{svg}");
        assert!(svg.contains(">\nplain\n</text>"), "{svg}");
        let empty = Plot {
            series: vec![],
            ..plot
        };
        assert!(!empty.draw(&dir.path().join("q.svg")).unwrap());
    }
}
