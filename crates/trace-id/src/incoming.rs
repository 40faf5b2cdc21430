//! [`Incoming`]: the three headers [`TraceIdLayer`](crate::TraceIdLayer) reads, found in
//! one pass over the request's headers.
//!
//! `HeaderMap::get` hashes the name it looks for, and the layer reads three names
//! (`X-Trace-Id`, `traceparent`, `tracestate`). A request carries a handful of headers, so
//! one walk over them, comparing names (a standard header differs from a custom one by its
//! representation, a custom one of another length by its length), costs less than three
//! hashed lookups. A request with many headers takes the lookups instead, so the cost stays
//! bounded by three hashes whatever the client sends.

use crate::layer::HeaderNames;
use http::{HeaderMap, HeaderName, HeaderValue};

/// Up to this many header values, one walk; above it, three hashed lookups.
const SCAN_LIMIT: usize = 16;

/// How many times a header came, and its value when it came once.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) enum Field<'a> {
    /// Not in the request.
    #[default]
    Absent,
    /// Exactly one field.
    One(&'a HeaderValue),
    /// Two fields or more (a combined-by-comma value is one field).
    Repeated,
}

impl<'a> Field<'a> {
    fn add(&mut self, value: &'a HeaderValue) {
        *self = match *self {
            Self::Absent => Self::One(value),
            Self::One(_) | Self::Repeated => Self::Repeated,
        };
    }

    /// The fields of `name` in `headers`, by a hashed lookup.
    pub(crate) fn of(headers: &'a HeaderMap, name: &HeaderName) -> Self {
        let mut values = headers.get_all(name).iter();
        match (values.next(), values.next()) {
            (None, _) => Self::Absent,
            (Some(value), None) => Self::One(value),
            (Some(_), Some(_)) => Self::Repeated,
        }
    }
}

/// What a request brings of the layer's three headers.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Incoming<'a> {
    pub(crate) trace_id: Field<'a>,
    pub(crate) traceparent: Field<'a>,
    /// Whether any `tracestate` field came (its fields are combined, so only read when a
    /// valid `traceparent` makes them meaningful).
    pub(crate) tracestate: bool,
}

impl<'a> Incoming<'a> {
    /// The layer's headers in `headers`, by `names`.
    pub(crate) fn find(headers: &'a HeaderMap, names: &HeaderNames) -> Self {
        if headers.len() > SCAN_LIMIT {
            return Self {
                trace_id: Field::of(headers, &names.trace_id),
                traceparent: Field::of(headers, &names.traceparent),
                tracestate: headers.contains_key(&names.tracestate),
            };
        }
        let mut found = Self::default();
        for (name, value) in headers {
            if *name == names.trace_id {
                found.trace_id.add(value);
            } else if *name == names.traceparent {
                found.traceparent.add(value);
            } else if *name == names.tracestate {
                found.tracestate = true;
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> HeaderNames {
        HeaderNames::DEFAULT
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    fn summary(found: Incoming<'_>) -> (String, String, bool) {
        let show = |field: Field<'_>| match field {
            Field::Absent => "absent".to_owned(),
            Field::One(value) => value.to_str().unwrap().to_owned(),
            Field::Repeated => "repeated".to_owned(),
        };
        (
            show(found.trace_id),
            show(found.traceparent),
            found.tracestate,
        )
    }

    /// The walk and the lookups agree, on maps below and above the walk's limit.
    #[test]
    fn the_walk_and_the_lookups_find_the_same() {
        let cases: &[&[(&str, &str)]] = &[
            &[],
            &[("x-trace-id", "a")],
            &[("x-trace-id", "a"), ("x-trace-id", "b")],
            &[("traceparent", "tp"), ("tracestate", "k=v")],
            &[("tracestate", "k=v"), ("tracestate", "l=w")],
            &[
                ("traceparent", "1"),
                ("traceparent", "2"),
                ("x-trace-id", "a"),
            ],
            // Same length as x-trace-id and tracestate, other names.
            &[("x-trace-ix", "no"), ("tracestatf", "no"), ("host", "h")],
        ];
        for case in cases {
            let small = map(case);
            let walked = summary(Incoming::find(&small, &names()));
            let looked_up = summary(Incoming {
                trace_id: Field::of(&small, &names().trace_id),
                traceparent: Field::of(&small, &names().traceparent),
                tracestate: small.contains_key(&names().tracestate),
            });
            assert_eq!(walked, looked_up, "{case:?}");

            // The same headers behind enough others to take the lookups.
            let mut big = map(case);
            for i in 0..=SCAN_LIMIT {
                big.append(
                    HeaderName::from_bytes(format!("x-filler-{i}").as_bytes()).unwrap(),
                    HeaderValue::from_static("f"),
                );
            }
            assert!(big.len() > SCAN_LIMIT);
            assert_eq!(summary(Incoming::find(&big, &names())), walked, "{case:?}");
        }
    }

    #[test]
    fn what_each_case_finds() {
        let headers = map(&[
            ("accept", "*/*"),
            ("x-trace-id", "abc"),
            ("traceparent", "one"),
            ("traceparent", "two"),
        ]);
        assert_eq!(
            summary(Incoming::find(&headers, &names())),
            ("abc".to_owned(), "repeated".to_owned(), false)
        );
        let headers = map(&[("tracestate", "k=v")]);
        assert_eq!(
            summary(Incoming::find(&headers, &names())),
            ("absent".to_owned(), "absent".to_owned(), true)
        );
    }

    #[test]
    fn configured_names_are_the_ones_found() {
        let names = HeaderNames {
            trace_id: HeaderName::from_static("x-request-id"),
            ..HeaderNames::DEFAULT
        };
        let headers = map(&[("x-trace-id", "ignored"), ("x-request-id", "used")]);
        assert_eq!(
            summary(Incoming::find(&headers, &names)).0,
            "used".to_owned()
        );
    }
}
