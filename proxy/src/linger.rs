//! Lingering close: a client connection closed while the client's bytes are still unread
//! (pipelined requests after a `Connection: close`, the rest of a refused body) would make
//! the kernel answer with a TCP reset, and a reset makes the client's kernel throw away
//! the response it has not read yet (RFC 9112 §9.6). Such a connection is half-closed
//! instead, and its input read and dropped for a short while before it is closed, as
//! nginx's `lingering_close` does.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// How long a closing connection's input is drained at most.
const LINGER_TIME: Duration = Duration::from_secs(2);
/// How many bytes are drained at most.
const LINGER_BYTES: usize = 1024 * 1024;

/// A client TCP stream that lingers on close when input is left unread.
#[derive(Debug)]
pub(crate) struct LingeringStream {
    // Taken by `Drop`.
    inner: Option<TcpStream>,
}

impl LingeringStream {
    pub(crate) fn new(stream: TcpStream) -> Self {
        Self { inner: Some(stream) }
    }

    fn stream(&mut self) -> &mut TcpStream {
        // Only `Drop` takes it, and nothing polls a dropped value.
        self.inner.as_mut().expect("stream present until drop")
    }
}

impl AsyncRead for LingeringStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().stream()).poll_read(cx, buf)
    }
}

impl AsyncWrite for LingeringStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().stream()).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().stream()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(TcpStream::is_write_vectored)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().stream()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().stream()).poll_shutdown(cx)
    }
}

impl Drop for LingeringStream {
    fn drop(&mut self) {
        let Some(stream) = self.inner.take() else {
            return;
        };
        // The common close — the client went first, or sent nothing more — has nothing to
        // wait for: one non-blocking peek at the socket tells (0 bytes is the client's FIN).
        let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        let unread = matches!(socket2::SockRef::from(&stream).peek(&mut probe), Ok(n) if n > 0);
        if !unread {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(linger(stream));
        }
    }
}

/// Sends FIN after what is written, then reads and drops the client's input until it
/// closes its side, or for [`LINGER_TIME`] / [`LINGER_BYTES`] at most.
async fn linger(mut stream: TcpStream) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let mut buf = vec![0u8; 16 * 1024];
    let mut drained = 0usize;
    let deadline = tokio::time::Instant::now() + LINGER_TIME;
    while drained < LINGER_BYTES {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => break,
        }
    }
}
