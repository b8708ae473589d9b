//! Prometheus exposition for the management APIs, through prometheus-client: each scrape
//! builds a registry from a snapshot of the process's counters (the data plane and the key
//! plane keep their own, lock-free; nothing here sits on their paths) and encodes it in the
//! OpenMetrics text format.

use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

/// Labels of one series: `(name, value)` pairs.
pub type Labels = Vec<(String, String)>;

/// One scrape's metrics.
#[derive(Debug, Default)]
pub struct Registry {
    inner: prometheus_client::registry::Registry,
}

impl Registry {
    /// An empty registry with the build's info series (`cpclink_build_info`).
    pub fn new() -> Self {
        let mut r = Self::default();
        r.gauges(
            "cpclink_build_info",
            "the running build",
            [(
                vec![("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned())],
                1,
            )],
        );
        r
    }

    /// A counter without labels (exposed as `NAME_total`).
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        let c = Counter::<u64>::default();
        c.inc_by(value);
        self.inner.register(name, help, c);
    }

    /// A gauge without labels.
    pub fn gauge(&mut self, name: &str, help: &str, value: u64) {
        let g = Gauge::<i64>::default();
        g.set(i64::try_from(value).unwrap_or(i64::MAX));
        self.inner.register(name, help, g);
    }

    /// A counter family, one series per label set.
    pub fn counters(
        &mut self,
        name: &str,
        help: &str,
        series: impl IntoIterator<Item = (Labels, u64)>,
    ) {
        let family = Family::<Labels, Counter<u64>>::default();
        for (labels, value) in series {
            family.get_or_create(&labels).inc_by(value);
        }
        self.inner.register(name, help, family);
    }

    /// A gauge family, one series per label set.
    pub fn gauges(
        &mut self,
        name: &str,
        help: &str,
        series: impl IntoIterator<Item = (Labels, u64)>,
    ) {
        let family = Family::<Labels, Gauge<i64>>::default();
        for (labels, value) in series {
            family
                .get_or_create(&labels)
                .set(i64::try_from(value).unwrap_or(i64::MAX));
        }
        self.inner.register(name, help, family);
    }

    /// The OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.inner);
        out
    }
}

/// One label pair.
pub fn label(name: &str, value: impl ToString) -> (String, String) {
    (name.to_owned(), value.to_string())
}

impl IntoResponse for Registry {
    fn into_response(self) -> Response {
        let mut r = self.encode().into_response();
        r.headers_mut().insert(
            "content-type",
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        );
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_gauges_are_encoded_with_their_labels() {
        let mut r = Registry::new();
        r.counter("cpclink_rotations", "rotations", 3);
        r.counters(
            "cpclink_worker_tx_packets",
            "sent",
            [(vec![label("worker", 0)], 5), (vec![label("worker", 1)], 7)],
        );
        let text = r.encode();
        assert!(text.contains("cpclink_rotations_total 3\n"), "{text}");
        assert!(
            text.contains("cpclink_worker_tx_packets_total{worker=\"1\"} 7\n"),
            "{text}"
        );
        assert!(text.contains("cpclink_build_info{version="), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
