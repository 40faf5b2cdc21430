//! The `dreamnet.mint.v1.Mint` service of `proto/mint.proto`, by hand: prost-derived
//! messages, tonic's prost codec, a server and a client (what tonic-build would generate,
//! without needing protoc).

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use dreamnet_billable::ReservedAction;
use http::uri::PathAndQuery;
use tonic::{body::Body as TonicBody, codegen::StdError, Status};
use tonic_prost::ProstCodec;

/// The gRPC service name (the path prefix of its methods).
pub const SERVICE_NAME: &str = "dreamnet.mint.v1.Mint";
/// The path of `Mint.Mint`.
pub const MINT_PATH: &str = "/dreamnet.mint.v1.Mint/Mint";

/// `dreamnet.mint.v1.MintRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MintRequest {
    /// What to mint; must not be empty.
    #[prost(string, tag = "1")]
    pub name: String,
}

/// `dreamnet.mint.v1.MintReply`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MintReply {
    /// The minted token, new for every run of the handler.
    #[prost(string, tag = "1")]
    pub token_id: String,
    /// The name that was minted.
    #[prost(string, tag = "2")]
    pub name: String,
    /// The billing action the mint was charged under.
    #[prost(string, tag = "3")]
    pub action_id: String,
    /// The amount held, in minor units.
    #[prost(int64, tag = "4")]
    pub amount: i64,
    /// The currency of `amount`.
    #[prost(string, tag = "5")]
    pub currency: String,
}

/// The Mint server: a tower service over any request body, as tonic-build's servers are.
///
/// The handler counts its runs ([`MintService::runs`]) so a test can tell a replay (no run)
/// from a second mint.
#[derive(Debug, Clone, Default)]
pub struct MintService {
    runs: Arc<AtomicU64>,
}

impl MintService {
    /// A new service that has run 0 times.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many times the handler has run.
    pub fn runs(&self) -> u64 {
        self.runs.load(Ordering::SeqCst)
    }

    /// The handler: validates the name, reads the billing reservation the layer attached.
    fn mint(&self, request: tonic::Request<MintRequest>) -> Result<MintReply, Status> {
        let action = request.extensions().get::<ReservedAction>().cloned();
        let name = request.into_inner().name;
        if name.trim().is_empty() {
            return Err(Status::invalid_argument("name must not be empty"));
        }
        let Some(action) = action else {
            // Only reachable if the service is mounted without the billable layer.
            return Err(Status::failed_precondition(
                "Mint is billable: no reservation",
            ));
        };
        let run = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(MintReply {
            token_id: format!("tok-{run}"),
            name,
            action_id: action.id.to_string(),
            amount: action.amount,
            currency: action.currency,
        })
    }
}

/// The future of a call to [`MintService`].
pub type MintFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<TonicBody>, Infallible>> + Send>>;

impl<B> tower::Service<http::Request<B>> for MintService
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<TonicBody>;
    type Error = Infallible;
    type Future = MintFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != MINT_PATH {
            let path = request.uri().path().to_owned();
            return Box::pin(async move {
                Ok(Status::unimplemented(format!("no method {path}")).into_http())
            });
        }
        let service = self.clone();
        Box::pin(async move {
            let codec = ProstCodec::<MintReply, MintRequest>::default();
            let mut grpc = tonic::server::Grpc::new(codec);
            Ok(grpc.unary(Unary(service), request).await)
        })
    }
}

/// [`MintService`] as tonic's unary-method adapter.
struct Unary(MintService);

impl tonic::server::UnaryService<MintRequest> for Unary {
    type Response = MintReply;
    type Future = std::future::Ready<Result<tonic::Response<MintReply>, Status>>;

    fn call(&mut self, request: tonic::Request<MintRequest>) -> Self::Future {
        std::future::ready(self.0.mint(request).map(tonic::Response::new))
    }
}

/// A client of the Mint service over any tonic transport (a `Channel` in the tests).
#[derive(Debug, Clone)]
pub struct MintClient<T> {
    inner: tonic::client::Grpc<T>,
}

impl<T> MintClient<T>
where
    T: tonic::client::GrpcService<TonicBody>,
    T::Error: Into<StdError>,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<StdError> + Send,
{
    /// A client over `transport`.
    pub fn new(transport: T) -> Self {
        Self {
            inner: tonic::client::Grpc::new(transport),
        }
    }

    /// Calls `Mint.Mint`.
    ///
    /// # Errors
    ///
    /// The call's status: every rejection of the layers arrives as one (see the README).
    pub async fn mint(
        &mut self,
        request: impl tonic::IntoRequest<MintRequest>,
    ) -> Result<tonic::Response<MintReply>, Status> {
        self.inner
            .ready()
            .await
            .map_err(|err| Status::unknown(format!("service was not ready: {}", err.into())))?;
        let codec = ProstCodec::<MintRequest, MintReply>::default();
        let path = PathAndQuery::from_static(MINT_PATH);
        self.inner.unary(request.into_request(), path, codec).await
    }
}
