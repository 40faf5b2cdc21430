//! [`RequestBody`], the request body the guarding layers hand their inner service.

/// The request body the inner service of a guarding layer ([`Idempotency`](crate::Idempotency),
/// the billable layer) receives: the incoming body `B` untouched when the request is not
/// guarded (`inner`), or the bytes the layer buffered to fingerprint them (`full`).
///
/// It is the same either-body the layers answer with ([`dreamnet_common::ResponseBody`]),
/// named for the direction it travels here. Any body type composes: the layer needs no way to
/// build a `B` from bytes, so hyper's `Incoming`, `tonic::body::Body` and axum's `Body` all
/// work, and an axum `Router` or tonic `Routes` inside accepts `RequestBody<B>` as it accepts
/// any `http_body::Body<Data = Bytes>`. An enum rather than a boxed body: no allocation of
/// its own on either path.
///
/// ```
/// use bytes::Bytes;
/// use dreamnet_idempotency::RequestBody;
/// use http_body_util::{BodyExt, Full};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let buffered: RequestBody<Full<Bytes>> = RequestBody::full(Bytes::from_static(b"{}"));
/// assert_eq!(buffered.collect().await.unwrap().to_bytes(), "{}");
/// # }
/// ```
pub type RequestBody<B> = dreamnet_common::ResponseBody<B>;
