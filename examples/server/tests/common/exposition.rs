//! A small parser of the Prometheus text format (0.0.4) and OpenMetrics text, enough for
//! tests to read sample values by name and labels and check each family's structure.

use std::collections::{BTreeMap, HashMap};

/// A series' labels (without `le`), sorted.
type Labels = Vec<(String, String)>;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed exposition.
#[derive(Debug, Default)]
pub struct Exposition {
    /// Family name -> type, from the `# TYPE` lines.
    pub types: HashMap<String, String>,
    pub samples: Vec<Sample>,
    /// Whether the last line was `# EOF` (OpenMetrics).
    pub eof: bool,
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut chars = text.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        assert_eq!(
            chars.next(),
            Some('"'),
            "label {key} is not quoted in {{{text}}}"
        );
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => panic!("dangling escape in {{{text}}}"),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.insert(key.trim_start_matches(',').to_owned(), value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    labels
}

fn parse_value(text: &str) -> f64 {
    match text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v
            .parse()
            .unwrap_or_else(|_| panic!("bad sample value {v:?}")),
    }
}

impl Exposition {
    /// Parses `text`, panicking on a line that is neither a comment nor a valid sample.
    pub fn parse(text: &str) -> Self {
        let mut out = Self::default();
        for line in text.lines() {
            assert!(!out.eof, "a line after # EOF: {line}");
            if line == "# EOF" {
                out.eof = true;
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
                out.types.insert(name.to_owned(), kind.to_owned());
            } else if line.starts_with('#') || line.is_empty() {
            } else {
                let (series, value) = match line.find('{') {
                    Some(open) => {
                        let close = line.rfind('}').expect("closing brace");
                        let name = &line[..open];
                        let labels = parse_labels(&line[open + 1..close]);
                        let value = line[close + 1..].trim();
                        ((name.to_owned(), labels), value)
                    }
                    None => {
                        let (name, value) = line.split_once(' ').expect("name value");
                        ((name.to_owned(), BTreeMap::new()), value.trim())
                    }
                };
                // An OpenMetrics sample may carry a timestamp or exemplar; ours do not.
                out.samples.push(Sample {
                    name: series.0,
                    labels: series.1,
                    value: parse_value(value),
                });
            }
        }
        out
    }

    /// The samples of `name` whose labels include every pair of `labels`.
    pub fn find(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }

    /// The value of the one sample of `name` with exactly-matching `labels` (a subset
    /// match that must be unique), or 0 when there is none.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found = self.find(name, labels);
        assert!(
            found.len() <= 1,
            "{name} {labels:?} is ambiguous: {found:?}"
        );
        found.first().map_or(0.0, |s| s.value)
    }

    /// Checks every histogram series: cumulative buckets that never decrease, a `+Inf`
    /// bucket equal to `_count`, and a `_sum`.
    pub fn check_histograms(&self) {
        for (family, kind) in &self.types {
            if kind != "histogram" {
                continue;
            }
            let mut series: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
            for s in self.find(&format!("{family}_bucket"), &[]) {
                let mut labels = s.labels.clone();
                let le = parse_value(&labels.remove("le").expect("a bucket has le"));
                series
                    .entry(labels.into_iter().collect())
                    .or_default()
                    .push((le, s.value));
            }
            assert!(!series.is_empty(), "histogram {family} has no buckets");
            for (labels, mut buckets) in series {
                buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
                assert!(
                    buckets.windows(2).all(|w| w[0].1 <= w[1].1),
                    "{family} {labels:?}: buckets decrease: {buckets:?}"
                );
                let (le, inf) = *buckets.last().unwrap();
                assert!(le.is_infinite(), "{family} {labels:?}: no +Inf bucket");
                let pairs: Vec<(&str, &str)> = labels
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let count = self.value(&format!("{family}_count"), &pairs);
                assert_eq!(inf, count, "{family} {labels:?}: +Inf bucket != _count");
                assert_eq!(
                    self.find(&format!("{family}_sum"), &pairs).len(),
                    1,
                    "{family} {labels:?}: one _sum"
                );
            }
        }
    }
}
