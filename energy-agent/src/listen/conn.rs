//! Accepted connections: the accept loop (at most `max_connections` open at once; one
//! past that is closed at once and counted), the TLS handshake of each on a task of its
//! own (so a slow client cannot hold up the others; bounded by the handshake timeout),
//! and the connection type both servers read: tonic through [`Connected`], axum through
//! [`AxumListener`].

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, mpsc, watch},
};
use tonic::transport::server::{Connected, TcpConnectInfo};

use super::{Guard, Reason};

/// One accepted connection (TLS already negotiated when the listener has it); its
/// slot among the listener's connections is freed when it is dropped.
pub struct Conn {
    io: Io,
    remote: SocketAddr,
    local: SocketAddr,
    _slot: OwnedSemaphorePermit,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Conn {
    /// The peer's address.
    pub fn remote(&self) -> SocketAddr {
        self.remote
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// tonic reads the peer's address from this (`Request::remote_addr`).
impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        TcpConnectInfo {
            local_addr: Some(self.local),
            remote_addr: Some(self.remote),
        }
    }
}

/// Accepts on `listener` until `shutdown` turns true; each connection, once through
/// its handshake, goes to the returned channel.
pub(super) fn accept(
    guard: Arc<Guard>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) -> mpsc::Receiver<Conn> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((tcp, remote)) => {
                    let Ok(slot) = guard.connections.clone().try_acquire_owned() else {
                        guard.reject(Reason::ConnectionLimit, remote);
                        drop(tcp);
                        continue;
                    };
                    let _ = tcp.set_nodelay(true);
                    tokio::spawn(handshake(guard.clone(), tcp, remote, slot, tx.clone()));
                }
                Err(e) => {
                    // Out of descriptors and the like: wait instead of spinning.
                    log::warn!("{}: accept failed: {e}", guard.name);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    rx
}

async fn handshake(
    guard: Arc<Guard>,
    tcp: TcpStream,
    remote: SocketAddr,
    slot: OwnedSemaphorePermit,
    tx: mpsc::Sender<Conn>,
) {
    let Ok(local) = tcp.local_addr() else { return };
    let io = match &guard.tls {
        None => Io::Plain(tcp),
        Some(tls) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
            match tokio::time::timeout(guard.limits.handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => Io::Tls(Box::new(stream)),
                Ok(Err(e)) => {
                    guard.handshake_failed(remote, &e.to_string());
                    return;
                }
                Err(_) => {
                    guard.handshake_failed(remote, "timed out");
                    return;
                }
            }
        }
    };
    let conn = Conn {
        io,
        remote,
        local,
        _slot: slot,
    };
    let _ = tx.send(conn).await;
}

/// The connections of a listener, as axum's server takes them.
pub struct AxumListener {
    pub(super) rx: mpsc::Receiver<Conn>,
    pub(super) local: SocketAddr,
}

impl axum::serve::Listener for AxumListener {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        match self.rx.recv().await {
            Some(conn) => {
                let remote = conn.remote;
                (conn, remote)
            }
            // The accept loop ended (shutdown): axum's graceful shutdown ends the server.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// The peer of an HTTP request (`ConnectInfo<Remote>` in a handler).
#[derive(Clone, Copy, Debug)]
pub struct Remote(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, AxumListener>>
    for Remote
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, AxumListener>) -> Self {
        Remote(*stream.remote_addr())
    }
}
