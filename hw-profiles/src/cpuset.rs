//! CPU sets in the two forms the kernel uses: cpulists (`0-3,8`) and hex masks (`ff,0000000f`).

use std::collections::BTreeSet;

/// A set of CPU numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuList(BTreeSet<usize>);

impl CpuList {
    /// Parses a cpulist as in `/sys/devices/system/cpu/online` (`"0-3,8"`; empty is empty).
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut set = BTreeSet::new();
        for part in s.trim().split(',').filter(|p| !p.is_empty()) {
            let (lo, hi) = match part.split_once('-') {
                Some((a, b)) => (a, b),
                None => (part, part),
            };
            let lo: usize = lo.trim().parse().map_err(|_| {
                format!("{part:?} is not a cpulist range (expected e.g. \"0-3,8\")")
            })?;
            let hi: usize = hi.trim().parse().map_err(|_| {
                format!("{part:?} is not a cpulist range (expected e.g. \"0-3,8\")")
            })?;
            if lo > hi {
                return Err(format!("{part:?} runs backwards (expected low-high)"));
            }
            if hi > 8191 {
                return Err(format!("{part:?} names a CPU above 8191"));
            }
            set.extend(lo..=hi);
        }
        Ok(Self(set))
    }

    /// Checks a profile's `cpu.cores` value: `"nic-node"`, `"all"` or a non-empty cpulist.
    pub fn parse_selector(s: &str) -> Result<(), String> {
        match s {
            "nic-node" | "all" => Ok(()),
            other => {
                let l = Self::parse(other)
                    .map_err(|e| format!("{e}; or use \"nic-node\" or \"all\""))?;
                if l.0.is_empty() {
                    Err(
                        "is empty (expected \"nic-node\", \"all\" or a cpulist like \"2-7\")"
                            .into(),
                    )
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Resolves a `cpu.cores` selector against the online CPUs and NUMA nodes.
    pub fn select(
        selector: &str,
        online: &CpuList,
        nodes: &[(u32, CpuList)],
        nic_node: Option<u32>,
    ) -> CpuList {
        let wanted = match selector {
            "all" => online.clone(),
            "nic-node" => match nic_node.and_then(|n| nodes.iter().find(|(id, _)| *id == n)) {
                Some((_, cpus)) => cpus.clone(),
                None => online.clone(),
            },
            list => Self::parse(list).unwrap_or_default(),
        };
        Self(wanted.0.intersection(&online.0).copied().collect())
    }

    /// Parses a sysfs hex mask (`"00000000,0000000f"`).
    pub fn from_mask(s: &str) -> Result<Self, String> {
        let mut set = BTreeSet::new();
        let words: Vec<&str> = s.trim().split(',').collect();
        for (i, word) in words.iter().rev().enumerate() {
            let v =
                u32::from_str_radix(word, 16).map_err(|_| format!("{s:?} is not a CPU mask"))?;
            for bit in 0..32 {
                if v & (1 << bit) != 0 {
                    set.insert(i * 32 + bit);
                }
            }
        }
        Ok(Self(set))
    }

    /// The sysfs hex mask form, in as many 32-bit words as the highest CPU needs.
    pub fn to_mask(&self) -> String {
        let top = self.0.iter().next_back().map_or(0, |c| c / 32);
        let words: Vec<String> = (0..=top)
            .rev()
            .map(|w| {
                let v = self
                    .0
                    .iter()
                    .filter(|c| *c / 32 == w)
                    .fold(0u32, |acc, c| acc | (1 << (c % 32)));
                format!("{v:08x}")
            })
            .collect();
        words.join(",")
    }

    /// One CPU.
    pub fn single(cpu: usize) -> Self {
        Self(BTreeSet::from([cpu]))
    }

    /// These CPUs.
    pub fn of(cpus: &[usize]) -> Self {
        Self(cpus.iter().copied().collect())
    }

    /// CPUs in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().copied()
    }

    /// Number of CPUs.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Display for CpuList {
    /// Writes the cpulist form (`0-3,8`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v: Vec<usize> = self.iter().collect();
        let mut parts = Vec::new();
        let mut i = 0;
        while i < v.len() {
            let mut j = i;
            while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
                j += 1;
            }
            parts.push(if i == j {
                v[i].to_string()
            } else {
                format!("{}-{}", v[i], v[j])
            });
            i = j + 1;
        }
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpulist_round_trips() {
        let l = CpuList::parse("0-3,8,10-11").unwrap();
        assert_eq!(l.iter().collect::<Vec<_>>(), [0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(l.to_string(), "0-3,8,10-11");
        assert!(CpuList::parse("3-1").is_err());
        assert!(CpuList::parse("a").is_err());
        assert!(CpuList::parse("").unwrap().is_empty());
    }

    #[test]
    fn masks_match_the_kernel_format() {
        assert_eq!(CpuList::of(&[0, 1]).to_mask(), "00000003");
        assert_eq!(CpuList::of(&[0, 33]).to_mask(), "00000002,00000001");
        assert_eq!(CpuList::default().to_mask(), "00000000");
        assert_eq!(
            CpuList::from_mask("00000002,00000001").unwrap(),
            CpuList::of(&[0, 33])
        );
        assert_eq!(CpuList::from_mask("0").unwrap(), CpuList::default());
    }

    #[test]
    fn selector_intersects_with_online_cpus() {
        let online = CpuList::parse("0-3").unwrap();
        let nodes = vec![
            (0, CpuList::parse("0-1").unwrap()),
            (1, CpuList::parse("2-5").unwrap()),
        ];
        assert_eq!(
            CpuList::select("nic-node", &online, &nodes, Some(1)).to_string(),
            "2-3"
        );
        assert_eq!(
            CpuList::select("nic-node", &online, &nodes, None).to_string(),
            "0-3"
        );
        assert_eq!(
            CpuList::select("1,3,9", &online, &nodes, None).to_string(),
            "1,3"
        );
    }
}
