//! A TCP forwarder between a server under test and PostgreSQL that a test can cut and restore,
//! to prove what the server does while its database is unreachable.

use std::{net::SocketAddr, sync::Arc};

use tokio::{
    io::copy_bidirectional,
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

/// See the module documentation.
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    up: Arc<watch::Sender<bool>>,
    task: JoinHandle<()>,
}

impl TcpProxy {
    /// Starts forwarding a new local port to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|err| panic!("binding the proxy: {err}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|err| panic!("proxy address: {err}"));
        let up = Arc::new(watch::channel(true).0);
        let task = tokio::spawn(accept(listener, upstream, up.clone()));
        Self { addr, up, task }
    }

    /// The address to connect to instead of the upstream.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts (false) or restores (true) the path: while cut, open connections are closed and new
    /// ones are refused.
    pub fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept(listener: TcpListener, upstream: SocketAddr, up: Arc<watch::Sender<bool>>) {
    while let Ok((client, _)) = listener.accept().await {
        if !*up.borrow() {
            drop(client);
            continue;
        }
        tokio::spawn(forward(client, upstream, up.subscribe()));
    }
}

async fn forward(mut client: TcpStream, upstream: SocketAddr, mut up: watch::Receiver<bool>) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    tokio::select! {
        _ = copy_bidirectional(&mut client, &mut server) => {},
        _ = up.wait_for(|up| !*up) => {},
    }
}
