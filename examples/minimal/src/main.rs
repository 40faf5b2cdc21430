//! Serves [`dreamnet_minimal::app`] on 127.0.0.1:5001 (admin token from `DREAMNET_ADMIN_TOKEN`).

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let token = std::env::var("DREAMNET_ADMIN_TOKEN")
        .map_err(|_| std::io::Error::other("set DREAMNET_ADMIN_TOKEN to the admin token"))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:5001").await?;
    axum::serve(listener, dreamnet_minimal::app(&token)).await
}
