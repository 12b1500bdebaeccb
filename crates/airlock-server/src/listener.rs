//! The accept loop: every connection served as HTTP/1.1 by hyper, within the connection
//! limits of [`Limits`](crate::config::Limits).
//!
//! - **Header read timeout**: hyper's own (`header_read_timeout`, on tokio's timer). Its
//!   clock starts when the connection starts waiting for a request (when it is accepted,
//!   and on a kept-alive connection when the previous response has been sent) and stops
//!   when the header is complete; when it runs out, hyper drops the connection. So it
//!   bounds a client that trickles its header as well as a kept-alive connection that
//!   idles: hyper has no separate idle timeout. A request in flight is not timed by it.
//! - **`max_connections`**: at the cap the loop stops accepting, so new connections wait,
//!   unanswered, in the kernel's listen backlog until an open one closes (none is refused
//!   while the backlog has room; when it is full the kernel drops new attempts, and
//!   clients retry their SYN).
//! - **`max_idle_connections`**: a connection is idle while no request of it is in flight:
//!   from accept to its first complete header, and between a response and the next
//!   complete header. A new connection is served only once an idle place is free, and
//!   until then nothing more is accepted (so later ones wait in the backlog as above); a
//!   connection that finishes a response and finds no place free, or one wanted by a new
//!   connection, is closed after it instead of kept alive.
//! - **Graceful shutdown**: when `shutdown` completes the listener closes, idle
//!   connections close at once (hyper's `graceful_shutdown`), requests in flight, streams
//!   included, finish on connections that then close, and [`serve`] returns once every
//!   connection has.
//!
//! Handlers see the peer address as axum's `ConnectInfo<SocketAddr>`, as with
//! `into_make_service_with_connect_info`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tower::ServiceExt as _;

use crate::config::Limits;

/// Serves `router` on `listener` until `shutdown` completes, then until every connection
/// has closed.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: &Limits,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let builder = Arc::new(builder);
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let idle = Arc::new(Semaphore::new(limits.max_idle_connections));
    // Connections hold receivers: `true` asks them to finish; all dropped, all are closed.
    let (stop, stopped) = watch::channel(false);
    let mut shutdown = pin!(shutdown);
    loop {
        let open_place = tokio::select! {
            biased;
            () = shutdown.as_mut() => break,
            place = Arc::clone(&open).acquire_owned() => match place {
                Ok(place) => place,
                Err(_) => break, // never closed
            },
        };
        let (stream, remote) = tokio::select! {
            biased;
            () = shutdown.as_mut() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    drop(open_place);
                    // A pause (out of file descriptors, say) must not hold up shutdown.
                    tokio::select! {
                        biased;
                        () = shutdown.as_mut() => break,
                        () = accept_failed(&error) => continue,
                    }
                }
            },
        };
        // Taken after the accept, so that no idle place sits reserved for a connection that
        // has not come: a connection finishing a response only loses its place to one that
        // is waiting. Until one frees, nothing more is accepted.
        let idle_place = tokio::select! {
            biased;
            () = shutdown.as_mut() => break,
            place = Arc::clone(&idle).acquire_owned() => match place {
                Ok(place) => place,
                Err(_) => break, // never closed
            },
        };
        let connection = Arc::new(Connection {
            idle_places: Arc::clone(&idle),
            idle_place: Mutex::new(Some(idle_place)),
            over_idle_cap: Notify::new(),
        });
        tokio::spawn(serve_connection(
            Arc::clone(&builder),
            stream,
            remote,
            router.clone(),
            connection,
            open_place,
            stopped.clone(),
        ));
    }
    // New connections are refused from here on.
    drop(listener);
    let _ = stop.send(true);
    drop(stopped);
    stop.closed().await;
}

/// After an accept error: nothing for a connection the peer gave up on, else (out of file
/// descriptors, say) a warning and a second's pause, so the loop does not spin.
async fn accept_failed(error: &std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::ConnectionRefused
    ) {
        return;
    }
    tracing::warn!("accepting a connection failed: {error}; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// What a connection's requests and responses share with its task.
struct Connection {
    idle_places: Arc<Semaphore>,
    /// Held while the connection is idle (no request in flight).
    idle_place: Mutex<Option<OwnedSemaphorePermit>>,
    /// Signalled when a response ends and no idle place is free.
    over_idle_cap: Notify,
}

impl Connection {
    /// A request header is complete: the connection is busy.
    fn request_started(&self) {
        drop(
            self.idle_place
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
    }

    /// A response has ended (or was dropped): idle again, if there is room.
    fn response_ended(&self) {
        match Arc::clone(&self.idle_places).try_acquire_owned() {
            Ok(place) => {
                *self
                    .idle_place
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(place);
            }
            Err(_) => self.over_idle_cap.notify_one(),
        }
    }
}

async fn serve_connection(
    builder: Arc<http1::Builder>,
    stream: TcpStream,
    remote: SocketAddr,
    router: Router,
    connection: Arc<Connection>,
    _open_place: OwnedSemaphorePermit,
    mut stopped: watch::Receiver<bool>,
) {
    let shared = Arc::clone(&connection);
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        shared.request_started();
        request.extensions_mut().insert(ConnectInfo(remote));
        let router = router.clone();
        let shared = Arc::clone(&shared);
        async move {
            let Ok(response) = router.oneshot(request.map(Body::new)).await;
            Ok::<_, Infallible>(response.map(|body| Tracked {
                body,
                connection: shared,
            }))
        }
    });
    let mut served = pin!(builder.serve_connection(TokioIo::new(stream), service));
    let mut closing = false;
    loop {
        tokio::select! {
            result = served.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!("connection from {remote}: {error}");
                }
                break;
            }
            // Closes it now if idle, else after the response in flight.
            () = connection.over_idle_cap.notified(), if !closing => {
                served.as_mut().graceful_shutdown();
                closing = true;
            }
            // The guard `wait_for` returns is dropped inside: it must not live on.
            () = async { let _ = stopped.wait_for(|stop| *stop).await; }, if !closing => {
                served.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}

/// A response body that tells its connection when it is done with.
struct Tracked {
    body: Body,
    connection: Arc<Connection>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.connection.response_ended();
    }
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
