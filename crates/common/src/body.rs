//! Response bodies that are either the inner service's or buffered, and bounded request
//! buffering.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{header, HeaderMap, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use pin_project_lite::pin_project;

pin_project! {
    /// The response body of a DreamNet layer: the inner service's body, or a buffered body the
    /// layer produced itself (a problem+json rejection or a replayed response). The guarding
    /// layers hand their inner service the same either-body as its request body
    /// (`dreamnet_idempotency::RequestBody`): the incoming body, or the bytes they buffered.
    ///
    /// Keeping the inner body as a variant (rather than boxing it) keeps layers generic over
    /// response bodies at no allocation cost on the pass-through path.
    // Variant fields are self-explanatory and pin-project-lite can't carry field docs.
    #[allow(missing_docs)]
    #[project = ResponseBodyProj]
    #[derive(Debug)]
    pub enum ResponseBody<B> {
        /// The inner service's body, streamed through untouched.
        Inner {
            #[pin]
            body: B,
        },
        /// A body the layer produced.
        Full {
            #[pin]
            body: Full<Bytes>,
        },
    }
}

impl<B> ResponseBody<B> {
    /// Wraps the inner service's body.
    pub fn inner(body: B) -> Self {
        Self::Inner { body }
    }

    /// A buffered body.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self::Full {
            body: Full::new(bytes.into()),
        }
    }

    /// Maps a `Response<Full<Bytes>>` (e.g. a problem) into this body type.
    pub fn from_full_response(response: Response<Full<Bytes>>) -> Response<Self> {
        response.map(|body| Self::Full { body })
    }

    /// Maps the inner service's response into this body type.
    pub fn from_inner_response(response: Response<B>) -> Response<Self> {
        response.map(Self::inner)
    }
}

impl<B> Default for ResponseBody<B> {
    fn default() -> Self {
        Self::full(Bytes::new())
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project() {
            ResponseBodyProj::Inner { body } => body.poll_frame(cx),
            ResponseBodyProj::Full { body } => match body.poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
                Poll::Ready(Some(Err(never))) => match never {},
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match self {
            Self::Inner { body } => body.is_end_stream(),
            Self::Full { body } => body.is_end_stream(),
        }
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Inner { body } => body.size_hint(),
            Self::Full { body } => body.size_hint(),
        }
    }
}

/// Why a request body could not be buffered.
#[derive(Debug, thiserror::Error)]
pub enum BufferError<E> {
    /// The body is larger than the limit (from `Content-Length` or while reading).
    #[error("request body is larger than {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The body failed while being read.
    #[error("request body could not be read: {0}")]
    Body(E),
}

/// Reads a whole body, refusing more than `limit` bytes.
///
/// A `Content-Length` (or exact size hint) over the limit is refused before a single byte is
/// read; a body without one is counted frame by frame, so a lying or chunked client cannot
/// make us buffer more than `limit` bytes. Trailers are dropped.
pub async fn buffer_limited<B>(
    headers: &HeaderMap,
    body: B,
    limit: usize,
) -> Result<Bytes, BufferError<B::Error>>
where
    B: Body<Data = Bytes>,
{
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) || body.size_hint().lower() > limit as u64 {
        return Err(BufferError::TooLarge { limit });
    }
    let mut body = std::pin::pin!(body);
    let mut first: Option<Bytes> = None;
    let mut rest: Option<bytes::BytesMut> = None;
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(BufferError::Body)?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        len += data.len();
        if len > limit {
            return Err(BufferError::TooLarge { limit });
        }
        // The common case is a single data frame: keep it without copying.
        match (&mut first, &mut rest) {
            (None, _) => first = Some(data),
            (Some(head), None) => {
                let mut buf = bytes::BytesMut::with_capacity(len);
                buf.extend_from_slice(head);
                buf.extend_from_slice(&data);
                rest = Some(buf);
            }
            (Some(_), Some(buf)) => buf.extend_from_slice(&data),
        }
    }
    Ok(match (first, rest) {
        (_, Some(buf)) => buf.freeze(),
        (Some(head), None) => head,
        (None, None) => Bytes::new(),
    })
}

/// Reads a whole response body if its exact size is known and within `limit`.
///
/// Returns `Ok(None)` without reading anything when the body is streaming (no exact size)
/// or larger than the limit, so the caller can pass it through untouched.
pub fn exact_len_within<B: Body>(body: &B, limit: usize) -> Option<u64> {
    body.size_hint().exact().filter(|len| *len <= limit as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};

    #[tokio::test]
    async fn buffers_within_limit_and_refuses_over_it() {
        let headers = HeaderMap::new();
        let ok = buffer_limited(&headers, Full::new(Bytes::from_static(b"hello")), 5)
            .await
            .unwrap();
        assert_eq!(ok, "hello");
        let err = buffer_limited(&headers, Full::new(Bytes::from_static(b"hello!")), 5).await;
        assert!(matches!(err, Err(BufferError::TooLarge { limit: 5 })));
    }

    #[tokio::test]
    async fn refuses_declared_length_before_reading() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, "999".parse().unwrap());
        let err = buffer_limited(&headers, Full::new(Bytes::from_static(b"x")), 10).await;
        assert!(matches!(err, Err(BufferError::TooLarge { .. })));
    }

    #[tokio::test]
    async fn counts_chunked_frames() {
        let chunks = (0..4)
            .map(|_| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"abc"))));
        let body = StreamBody::new(futures_stream(chunks.clone().collect()));
        let all = buffer_limited(&HeaderMap::new(), body, 12).await.unwrap();
        assert_eq!(all, "abcabcabcabc");
        let body = StreamBody::new(futures_stream(chunks.collect()));
        let err = buffer_limited(&HeaderMap::new(), body, 11).await;
        assert!(matches!(err, Err(BufferError::TooLarge { limit: 11 })));
    }

    #[tokio::test]
    async fn response_body_passes_inner_through() {
        let body: ResponseBody<Full<Bytes>> =
            ResponseBody::inner(Full::new(Bytes::from_static(b"in")));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "in");
        let body: ResponseBody<Full<Bytes>> = ResponseBody::full("out");
        assert_eq!(body.collect().await.unwrap().to_bytes(), "out");
    }

    #[tokio::test]
    async fn streams_either_variant_with_its_size() {
        let inner: ResponseBody<Full<Bytes>> = ResponseBody::inner(Full::new(Bytes::from("in")));
        assert_eq!(inner.size_hint().exact(), Some(2));
        assert_eq!(inner.collect().await.unwrap().to_bytes(), "in");
        let buffered: ResponseBody<Full<Bytes>> = ResponseBody::full(Bytes::from("abc"));
        assert_eq!(buffered.size_hint().exact(), Some(3));
        assert!(!buffered.is_end_stream());
        assert_eq!(buffered.collect().await.unwrap().to_bytes(), "abc");
        assert!(ResponseBody::<Full<Bytes>>::default().is_end_stream());
    }

    fn futures_stream<T>(items: Vec<T>) -> futures_util::stream::Iter<std::vec::IntoIter<T>> {
        futures_util::stream::iter(items)
    }
}
