//! Stored responses: what a retry gets back.

use bytes::Bytes;
use http::{header, response::Parts, HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::Full;

/// The header set on every replayed response (Stripe's name).
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// The response headers replayed by default: representation and caching metadata that belong
/// to the stored result. Per-response headers (`Date`, `Set-Cookie`, trace ids) are not.
pub const DEFAULT_REPLAYED_HEADERS: &[HeaderName] = &[
    header::CONTENT_TYPE,
    header::CONTENT_LANGUAGE,
    header::CONTENT_DISPOSITION,
    header::CONTENT_LOCATION,
    header::LOCATION,
    header::ETAG,
    header::LAST_MODIFIED,
    header::CACHE_CONTROL,
    header::EXPIRES,
    header::VARY,
    header::LINK,
];

/// Headers never stored, even when allow-listed: a replayed `Set-Cookie` would hand one
/// session's cookie out again, a replayed `Date` would lie, and framing headers are
/// recomputed for the replayed body.
const NEVER_REPLAYED: &[HeaderName] = &[
    header::SET_COOKIE,
    header::DATE,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::CONNECTION,
    header::TRAILER,
    header::UPGRADE,
];

fn never_replayed(name: &HeaderName) -> bool {
    NEVER_REPLAYED.contains(name) || name == IDEMPOTENT_REPLAYED
}

/// A stored response: status, allow-listed headers and the whole body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredResponse {
    /// The status code.
    pub status: u16,
    /// Allow-listed headers, name (lowercase) and raw value, in response order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The whole body.
    pub body: Bytes,
}

/// A stored value that is not a record we wrote (corrupt, truncated, foreign or from a newer
/// version). The layer answers 500 with a problem rather than panicking.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt idempotency record: {reason}")]
pub struct CorruptRecord {
    reason: &'static str,
}

impl CorruptRecord {
    /// A corrupt-record error with a short, static reason.
    pub fn new(reason: &'static str) -> Self {
        Self { reason }
    }

    /// Why the record was refused.
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

/// Magic bytes and version of the encoding: `DNIR` ("DreamNet idempotency record"), v1.
const MAGIC: &[u8; 4] = b"DNIR";
const VERSION: u8 = 1;

impl StoredResponse {
    /// Captures a response, keeping only headers in `replayed_headers` (and never
    /// `Set-Cookie`, `Date` or framing headers).
    pub fn capture(parts: &Parts, body: Bytes, replayed_headers: &[HeaderName]) -> Self {
        let headers = parts
            .headers
            .iter()
            .filter(|(name, _)| replayed_headers.contains(name) && !never_replayed(name))
            .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
            .collect();
        Self {
            status: parts.status.as_u16(),
            headers,
            body,
        }
    }

    /// The replay: the stored status, headers and body, plus `Idempotent-Replayed: true`.
    ///
    /// Headers that are not valid HTTP (only possible if the struct was built by hand) are
    /// skipped; an invalid status becomes 500.
    pub fn replay(&self) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(self.body.clone()));
        *response.status_mut() =
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let headers = response.headers_mut();
        headers.reserve(self.headers.len() + 1);
        for (name, value) in &self.headers {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_bytes(value),
            ) {
                headers.append(name, value);
            }
        }
        headers.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
        response
    }

    /// The stable, versioned binary encoding: `DNIR`, version byte, status (u16), header
    /// count (u16), each header as name (u16 length + bytes) and value (u32 length + bytes),
    /// then the body (u64 length + bytes); integers big-endian.
    pub fn encode(&self) -> Vec<u8> {
        let headers_len: usize = self
            .headers
            .iter()
            .map(|(n, v)| 6 + n.len() + v.len())
            .sum();
        let mut out = Vec::with_capacity(4 + 1 + 2 + 2 + headers_len + 8 + self.body.len());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&self.status.to_be_bytes());
        // Response headers are bounded far below these limits by every HTTP implementation;
        // saturating keeps encode infallible and decode then refuses the record.
        let count = u16::try_from(self.headers.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&count.to_be_bytes());
        for (name, value) in self.headers.iter().take(usize::from(count)) {
            let name_len = u16::try_from(name.len()).unwrap_or(u16::MAX);
            out.extend_from_slice(&name_len.to_be_bytes());
            out.extend_from_slice(&name.as_bytes()[..usize::from(name_len)]);
            let value_len = u32::try_from(value.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&value_len.to_be_bytes());
            out.extend_from_slice(&value[..value_len as usize]);
        }
        out.extend_from_slice(&(self.body.len() as u64).to_be_bytes());
        out.extend_from_slice(&self.body);
        out
    }

    /// Decodes [`encode`](Self::encode)'s output.
    ///
    /// # Errors
    /// [`CorruptRecord`] for anything else: wrong magic or version, truncation, trailing
    /// bytes, an invalid status, header name or value. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, CorruptRecord> {
        let mut r = Reader(bytes);
        if r.take(4)? != MAGIC {
            return Err(CorruptRecord::new("not an idempotency record"));
        }
        if r.take(1)? != [VERSION] {
            return Err(CorruptRecord::new("unknown record version"));
        }
        let status = r.u16()?;
        if StatusCode::from_u16(status).is_err() {
            return Err(CorruptRecord::new("invalid status code"));
        }
        let count = r.u16()?;
        let mut headers = Vec::with_capacity(usize::from(count).min(64));
        for _ in 0..count {
            let name_len = r.u16()?;
            let name = r.take(usize::from(name_len))?;
            let value_len = r.u32()?;
            let value = r.take(value_len as usize)?;
            let name = HeaderName::from_bytes(name)
                .map_err(|_| CorruptRecord::new("invalid header name"))?;
            HeaderValue::from_bytes(value)
                .map_err(|_| CorruptRecord::new("invalid header value"))?;
            headers.push((name.as_str().to_owned(), value.to_vec()));
        }
        let body_len = usize::try_from(r.u64()?)
            .map_err(|_| CorruptRecord::new("body length out of range"))?;
        let body = Bytes::copy_from_slice(r.take(body_len)?);
        if !r.0.is_empty() {
            return Err(CorruptRecord::new("trailing bytes after the body"));
        }
        Ok(Self {
            status,
            headers,
            body,
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CorruptRecord> {
        if self.0.len() < n {
            return Err(CorruptRecord::new("truncated record"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CorruptRecord> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u16(&mut self) -> Result<u16, CorruptRecord> {
        self.array().map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Result<u32, CorruptRecord> {
        self.array().map(u32::from_be_bytes)
    }

    fn u64(&mut self) -> Result<u64, CorruptRecord> {
        self.array().map(u64::from_be_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use proptest::prelude::*;

    fn sample() -> StoredResponse {
        let response = Response::builder()
            .status(201)
            .header("content-type", "application/json")
            .header("location", "/charges/1")
            .header("set-cookie", "session=abc")
            .header("date", "Fri, 27 Nov 2026 12:00:00 GMT")
            .header("x-internal", "1")
            .body(())
            .unwrap();
        let (parts, ()) = response.into_parts();
        StoredResponse::capture(
            &parts,
            Bytes::from_static(b"{\"id\":1}"),
            DEFAULT_REPLAYED_HEADERS,
        )
    }

    #[test]
    fn capture_keeps_only_allow_listed_headers() {
        let stored = sample();
        let names: Vec<&str> = stored.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["content-type", "location"]);
        // Even an explicit allow-list cannot replay set-cookie or date.
        let (parts, ()) = Response::builder()
            .header("set-cookie", "a=b")
            .header("date", "x")
            .body(())
            .unwrap()
            .into_parts();
        let stored =
            StoredResponse::capture(&parts, Bytes::new(), &[header::SET_COOKIE, header::DATE]);
        assert!(stored.headers.is_empty());
    }

    #[tokio::test]
    async fn replay_sets_status_headers_body_and_marker() {
        let response = sample().replay();
        assert_eq!(response.status(), StatusCode::CREATED);
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(response.headers()["location"], "/charges/1");
        assert_eq!(response.headers()[IDEMPOTENT_REPLAYED], "true");
        assert!(response.headers().get("set-cookie").is_none());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "{\"id\":1}");
    }

    #[test]
    fn encode_decode_round_trip() {
        let stored = sample();
        assert_eq!(StoredResponse::decode(&stored.encode()).unwrap(), stored);
    }

    #[test]
    fn decode_refuses_foreign_and_damaged_bytes() {
        assert!(StoredResponse::decode(b"").is_err());
        assert!(StoredResponse::decode(b"{\"status\":200}").is_err());
        let good = sample().encode();
        for cut in 0..good.len() {
            assert!(
                StoredResponse::decode(&good[..cut]).is_err(),
                "prefix {cut} accepted"
            );
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(StoredResponse::decode(&trailing).is_err());
        let mut version = good.clone();
        version[4] = 9;
        assert_eq!(
            StoredResponse::decode(&version).unwrap_err().reason(),
            "unknown record version"
        );
        let mut status = good;
        status[5..7].copy_from_slice(&42u16.to_be_bytes());
        assert!(StoredResponse::decode(&status).is_err());
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = StoredResponse::decode(&bytes);
            let mut prefixed = b"DNIR\x01".to_vec();
            prefixed.extend_from_slice(&bytes);
            let _ = StoredResponse::decode(&prefixed);
        }

        #[test]
        fn round_trips(status in 100u16..=599, body in proptest::collection::vec(any::<u8>(), 0..256),
                       values in proptest::collection::vec("[ -~]{0,20}", 0..5)) {
            let headers = values.into_iter().enumerate()
                .map(|(i, v)| (format!("x-h{i}"), v.trim().as_bytes().to_vec())).collect();
            let stored = StoredResponse { status, headers, body: Bytes::from(body) };
            prop_assert_eq!(StoredResponse::decode(&stored.encode()).unwrap(), stored);
        }
    }
}
