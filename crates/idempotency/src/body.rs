//! [`RequestBody`], the request body the guarding layers hand their inner service.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use pin_project_lite::pin_project;

pin_project! {
    /// The request body the inner service of a guarding layer ([`Idempotency`](crate::Idempotency),
    /// the billable layer) receives: the incoming body `B` untouched when the request is not
    /// guarded, or the bytes the layer buffered (to fingerprint them) when it is.
    ///
    /// Any body type composes: the layer needs no way to build a `B` from bytes, so hyper's
    /// `Incoming`, `tonic::body::Body` and axum's `Body` all work, and an axum `Router` or
    /// tonic `Routes` inside accepts `RequestBody<B>` as it accepts any
    /// `http_body::Body<Data = Bytes>`. An enum rather than a boxed body: no allocation of
    /// its own on either path (a framework that boxes every body still boxes this one once,
    /// as it boxed `B`).
    ///
    /// ```
    /// use bytes::Bytes;
    /// use dreamnet_idempotency::RequestBody;
    /// use http_body_util::{BodyExt, Full};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let buffered: RequestBody<Full<Bytes>> = RequestBody::buffered(Bytes::from_static(b"{}"));
    /// assert_eq!(buffered.collect().await.unwrap().to_bytes(), "{}");
    /// # }
    /// ```
    // Variant fields are self-explanatory and pin-project-lite can't carry field docs.
    #[allow(missing_docs)]
    #[project = RequestBodyProj]
    #[derive(Debug)]
    pub enum RequestBody<B> {
        /// The incoming body, streamed through untouched (the request is not guarded).
        Inner {
            #[pin]
            body: B,
        },
        /// The whole body, buffered by the layer.
        Buffered {
            #[pin]
            body: Full<Bytes>,
        },
    }
}

impl<B> RequestBody<B> {
    /// Wraps the incoming body.
    pub fn inner(body: B) -> Self {
        Self::Inner { body }
    }

    /// A body of buffered bytes.
    pub fn buffered(bytes: Bytes) -> Self {
        Self::Buffered {
            body: Full::new(bytes),
        }
    }
}

impl<B> Default for RequestBody<B> {
    fn default() -> Self {
        Self::buffered(Bytes::new())
    }
}

impl<B> Body for RequestBody<B>
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
            RequestBodyProj::Inner { body } => body.poll_frame(cx),
            RequestBodyProj::Buffered { body } => match body.poll_frame(cx) {
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
            Self::Buffered { body } => body.is_end_stream(),
        }
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Inner { body } => body.size_hint(),
            Self::Buffered { body } => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn streams_either_variant_with_its_size() {
        let inner: RequestBody<Full<Bytes>> = RequestBody::inner(Full::new(Bytes::from("in")));
        assert_eq!(inner.size_hint().exact(), Some(2));
        assert_eq!(inner.collect().await.unwrap().to_bytes(), "in");
        let buffered: RequestBody<Full<Bytes>> = RequestBody::buffered(Bytes::from("abc"));
        assert_eq!(buffered.size_hint().exact(), Some(3));
        assert!(!buffered.is_end_stream());
        assert_eq!(buffered.collect().await.unwrap().to_bytes(), "abc");
        assert!(RequestBody::<Full<Bytes>>::default().is_end_stream());
    }
}
