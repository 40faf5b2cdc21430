//! Real tonic clients over TCP against the example served in-process on a free port: every
//! layer's rejection arrives as a gRPC status a client (and its retry policy) can act on.
#![allow(missing_docs)]

use std::{net::SocketAddr, sync::Arc};

use dreamnet_billable::LedgerAdmin;
use dreamnet_common::ManualClock;
use dreamnet_grpc_server::{
    app::MINT_PRICE,
    mint::{MintClient, MintReply, MintRequest},
    serve, App, Settings,
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{transport::Channel, Code, Request, Status};
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

/// 2026-01-01T00:00:05Z: 55 s left in the minute.
const T: u64 = 1_767_225_600_000 + 5_000;

/// A client's trace id (the seed's format).
const TRACE_ID: &str = "mbx2k9q1-3f9a0c1e77d24b6a";

/// The example on a free port, with a hand-moved clock.
struct Server {
    app: App,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Server {
    async fn start(default_credit: Option<i64>) -> Self {
        let clock = Arc::new(ManualClock::new(T));
        let app = App::new(Settings {
            clock,
            default_credit,
        })
        .await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let service = app.service();
        let task = tokio::spawn(serve::serve(listener, service, async {
            let _ = stopped.await;
        }));
        Self {
            app,
            addr,
            stop: Some(stop),
            task,
        }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap();
    }
}

fn metadata(status: &Status, name: &str) -> String {
    status
        .metadata()
        .get(name)
        .map_or(String::new(), |v| v.to_str().unwrap().to_owned())
}

fn mint_request(name: &str, key: Option<&str>, account: &str) -> Request<MintRequest> {
    let mut request = Request::new(MintRequest {
        name: name.to_owned(),
    });
    let metadata = request.metadata_mut();
    if let Some(key) = key {
        metadata.insert("idempotency-key", key.parse().unwrap());
    }
    metadata.insert("x-account-id", account.parse().unwrap());
    request
}

async fn mint(
    channel: &Channel,
    request: Request<MintRequest>,
) -> Result<(MintReply, tonic::metadata::MetadataMap), Status> {
    let response = MintClient::new(channel.clone()).mint(request).await?;
    let metadata = response.metadata().clone();
    Ok((response.into_inner(), metadata))
}

#[tokio::test]
async fn the_31st_health_check_in_a_minute_is_resource_exhausted_with_pushback() {
    let server = Server::start(None).await;
    let mut health = HealthClient::new(server.channel().await);
    for i in 1..=30 {
        let response = health
            .check(HealthCheckRequest::default())
            .await
            .unwrap_or_else(|status| panic!("check {i}: {status:?}"));
        assert_eq!(response.get_ref().status, 1, "SERVING");
        let ratelimit = response.metadata().get("ratelimit").unwrap();
        assert_eq!(ratelimit, format!("\"minute\";r={};t=55", 30 - i).as_str());
        assert!(response.metadata().get("x-trace-id").is_some());
    }
    let mut request = Request::new(HealthCheckRequest::default());
    request
        .metadata_mut()
        .insert("x-trace-id", TRACE_ID.parse().unwrap());
    let status = health.check(request).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(metadata(&status, "grpc-retry-pushback-ms"), "55000");
    assert_eq!(metadata(&status, "retry-after"), "55");
    assert_eq!(metadata(&status, "ratelimit"), "\"minute\";r=0;t=55");
    assert!(metadata(&status, "ratelimit-policy").starts_with("\"minute\";q=30;w=60"));
    assert_eq!(
        metadata(&status, "dreamnet-problem-type"),
        "urn:dreamnet:control:rate-limited"
    );
    assert_eq!(
        metadata(&status, "x-trace-id"),
        TRACE_ID,
        "the trace id is metadata"
    );
    assert!(
        status.message().contains("star-bridge"),
        "{}",
        status.message()
    );
    server.stop().await;
}

#[tokio::test]
async fn an_engaged_kill_switch_is_unavailable_for_health_and_mint() {
    let server = Server::start(None).await;
    let channel = server.channel().await;
    server
        .app
        .plane()
        .engage_kill_switch("incident 42", "ops", None)
        .await
        .unwrap();
    let status = HealthClient::new(channel.clone())
        .check(HealthCheckRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        metadata(&status, "dreamnet-problem-type"),
        "urn:dreamnet:control:kill-switch"
    );
    let status = mint(&channel, mint_request("rose", Some("k-ks"), "acct-1"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(server.app.mint().runs(), 0, "the handler never ran");
    server.stop().await;
}

#[tokio::test]
async fn a_repeated_mint_replays_and_charges_once_and_another_body_is_failed_precondition() {
    let server = Server::start(None).await;
    let channel = server.channel().await;
    let (first, first_meta) = mint(&channel, mint_request("rose", Some("k-1"), "acct-1"))
        .await
        .unwrap();
    assert_eq!(first.token_id, "tok-1");
    assert_eq!((first.amount, first.currency.as_str()), (MINT_PRICE, "USD"));
    assert!(first_meta.get("idempotent-replayed").is_none());
    let (again, again_meta) = mint(&channel, mint_request("rose", Some("k-1"), "acct-1"))
        .await
        .unwrap();
    assert_eq!(again, first, "the replay is the first reply");
    assert_eq!(again_meta.get("idempotent-replayed").unwrap(), "true");
    assert_eq!(server.app.mint().runs(), 1, "the handler ran once");
    let ledger = server.app.ledger();
    let stats = ledger.stats().await.unwrap();
    assert_eq!((stats.charged, stats.pending, stats.failed), (1, 0, 0));
    let account = ledger.account(&"acct-1".parse().unwrap()).await.unwrap();
    assert_eq!(account.map(|a| a.charged), Some(MINT_PRICE));

    let status = mint(&channel, mint_request("tulip", Some("k-1"), "acct-1"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("different request payload"),
        "{}",
        status.message()
    );
    assert_eq!(server.app.mint().runs(), 1);
    assert_eq!(
        ledger.stats().await.unwrap().charged,
        1,
        "nothing more charged"
    );
    server.stop().await;
}

#[tokio::test]
async fn bad_mints_get_their_status_and_are_never_charged() {
    let server = Server::start(Some(15)).await;
    let channel = server.channel().await;
    // No key: the billable layer requires one.
    let status = mint(&channel, mint_request("rose", None, "acct-2"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("Idempotency-Key"),
        "{}",
        status.message()
    );
    // The handler's own INVALID_ARGUMENT (HTTP 200 trailers-only) is not a success: voided.
    let status = mint(&channel, mint_request(" ", Some("k-empty"), "acct-2"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(status.message(), "name must not be empty");
    let stats = server.app.ledger().stats().await.unwrap();
    assert_eq!((stats.charged, stats.failed), (0, 1));
    // 15 of credit: one mint of 10, then the second cannot be covered.
    mint(&channel, mint_request("rose", Some("k-a"), "acct-2"))
        .await
        .unwrap();
    let status = mint(&channel, mint_request("rose", Some("k-b"), "acct-2"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status
            .message()
            .starts_with("Insufficient Funds: account acct-2 has 5 USD"),
        "{}",
        status.message()
    );
    assert_eq!(server.app.ledger().stats().await.unwrap().charged, 1);
    server.stop().await;
}
