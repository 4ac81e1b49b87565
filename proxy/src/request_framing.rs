//! Follows the framing of HTTP/1 requests on the raw bytes a client sends, beside hyper's
//! own parser, for what hyper does not tell its service:
//! - a request carrying both Content-Length and Transfer-Encoding: hyper drops the length
//!   and reads the body as chunked; canaryd refuses it with one 400, as nginx does
//!   (RFC 9112 §6.1 allows either, and both close the connection);
//! - the length of the request line alone (hyper bounds only the whole head): 414;
//! - where the connection is between requests, so that the header-read timeout runs from
//!   the first byte of a head (from the accept for the first one) and the keep-alive idle
//!   timeout between requests, each on its own: hyper has one timer for both, which starts
//!   when the previous response is written.
//!
//! Only framing is followed (head end, Content-Length, chunk sizes), so for every input
//! hyper accepts the boundaries found here are hyper's; an input hyper refuses ends the
//! connection anyway. The HTTP/2 preface, an upgrade, a refused head, or anything this
//! scanner does not follow turns it off for the rest of the connection.
//!
//! Cost: one `memchr` per head line and a few compares per header name, nothing per body
//! byte; no allocation unless a line is split between two reads.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Why a request head was refused; set as a request extension for the proxy to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusedHead {
    /// Content-Length together with Transfer-Encoding (a request smuggling shape).
    AmbiguousLength,
    /// A request line longer than `limits.max_request_line_bytes`.
    RequestLineTooLong,
}

/// Where a connection is, as seen on its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// No byte of the next request head yet.
    BetweenRequests,
    /// Part of a request head has arrived.
    InHead,
    /// A request body is arriving.
    InBody,
    /// Not followed (HTTP/2, an upgrade, after a refusal).
    Untracked,
}

impl Phase {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Phase::BetweenRequests,
            1 => Phase::InHead,
            2 => Phase::InBody,
            _ => Phase::Untracked,
        }
    }
}

/// What a connection's input scanner tells its service and its driver.
#[derive(Debug, Default)]
pub struct FramingState {
    /// 1-based index of the refused head (0: none); nothing after it is served.
    refused_head: AtomicU64,
    /// 1: ambiguous length, 2: request line too long.
    refused_why: AtomicU8,
    phase: AtomicU8,
    /// Bumped on every phase change, so a driver waking up sees a change it slept through.
    changes: AtomicU64,
}

impl FramingState {
    /// A state shared by one connection's scanner, service and driver.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Why the `n`th request head (1-based) was refused, if it was.
    pub fn refused(&self, n: u64) -> Option<RefusedHead> {
        if self.refused_head.load(Ordering::Relaxed) != n {
            return None;
        }
        match self.refused_why.load(Ordering::Relaxed) {
            1 => Some(RefusedHead::AmbiguousLength),
            2 => Some(RefusedHead::RequestLineTooLong),
            _ => None,
        }
    }

    /// The current phase and the number of phase changes so far.
    pub(crate) fn phase(&self) -> (Phase, u64) {
        (
            Phase::from_u8(self.phase.load(Ordering::Relaxed)),
            self.changes.load(Ordering::Relaxed),
        )
    }
}

/// Where the scanner is in the byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    Head,
    /// Body bytes left of a Content-Length body.
    Fixed(u64),
    /// In a chunk-size line: the size so far, and whether an extension started.
    ChunkSize {
        size: u64,
        digits: bool,
        ext: bool,
    },
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkDataEnd,
    /// Trailer lines after the last chunk; `line` when the current one has content.
    Trailers {
        line: bool,
    },
    Off,
}

/// What the head read so far says about framing.
#[derive(Debug, Default, Clone, Copy)]
struct Head {
    /// Lines taken, the request line included (leading empty lines are skipped, as hyper does).
    lines: u32,
    bytes: usize,
    content_length: Option<u64>,
    bad_length: bool,
    transfer_encoding: bool,
    upgrade: bool,
}

/// Follows one connection's request framing; fed every byte read, in order.
#[derive(Debug)]
pub(crate) struct Scanner {
    state: Arc<FramingState>,
    at: At,
    head: Head,
    /// Complete heads seen.
    heads: u64,
    /// The start of a line split between reads.
    partial: Vec<u8>,
    phase: Phase,
    changes: u64,
    max_line: usize,
    max_head: usize,
}

impl Scanner {
    /// A scanner reporting into `state`, refusing request lines over `max_line` bytes, and
    /// giving up past `max_head` head bytes (hyper refuses those heads itself).
    pub(crate) fn new(state: Arc<FramingState>, max_line: usize, max_head: usize) -> Self {
        Self {
            state,
            at: At::Head,
            head: Head::default(),
            heads: 0,
            partial: Vec::new(),
            phase: Phase::BetweenRequests,
            changes: 0,
            max_line,
            max_head,
        }
    }

    fn set_phase(&mut self, phase: Phase) {
        if self.phase != phase {
            self.phase = phase;
            self.changes += 1;
            self.state.phase.store(phase as u8, Ordering::Relaxed);
            self.state.changes.store(self.changes, Ordering::Relaxed);
        }
    }

    fn off(&mut self) {
        self.at = At::Off;
        self.partial = Vec::new();
        self.set_phase(Phase::Untracked);
    }

    fn refuse(&mut self, why: RefusedHead) {
        self.state.refused_why.store(
            match why {
                RefusedHead::AmbiguousLength => 1,
                RefusedHead::RequestLineTooLong => 2,
            },
            Ordering::Relaxed,
        );
        self.state.refused_head.store(self.heads + 1, Ordering::Relaxed);
        self.off();
    }

    /// Takes the next bytes read from the client.
    pub(crate) fn feed(&mut self, mut buf: &[u8]) {
        while !buf.is_empty() {
            match self.at {
                At::Off => return,
                At::Head => buf = self.feed_head(buf),
                At::Fixed(left) => {
                    let take = left.min(buf.len() as u64);
                    buf = &buf[take as usize..];
                    if take == left {
                        self.message_done();
                    } else {
                        self.at = At::Fixed(left - take);
                    }
                }
                At::ChunkSize { size, digits, ext } => {
                    let b = buf[0];
                    buf = &buf[1..];
                    self.at = match b {
                        b'\n' if !digits => {
                            self.off();
                            return;
                        }
                        b'\n' if size == 0 => At::Trailers { line: false },
                        b'\n' => At::ChunkData(size),
                        _ if ext => At::ChunkSize { size, digits, ext },
                        b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                            let d = u64::from((b as char).to_digit(16).unwrap_or(0));
                            match size.checked_mul(16).and_then(|s| s.checked_add(d)) {
                                Some(size) => At::ChunkSize {
                                    size,
                                    digits: true,
                                    ext,
                                },
                                None => {
                                    self.off();
                                    return;
                                }
                            }
                        }
                        b';' | b' ' | b'\t' => At::ChunkSize {
                            size,
                            digits,
                            ext: true,
                        },
                        b'\r' => At::ChunkSize { size, digits, ext },
                        _ => {
                            self.off();
                            return;
                        }
                    };
                }
                At::ChunkData(left) => {
                    let take = left.min(buf.len() as u64);
                    buf = &buf[take as usize..];
                    self.at = if take == left {
                        At::ChunkDataEnd
                    } else {
                        At::ChunkData(left - take)
                    };
                }
                At::ChunkDataEnd => {
                    let b = buf[0];
                    buf = &buf[1..];
                    match b {
                        b'\r' => {}
                        b'\n' => {
                            self.at = At::ChunkSize {
                                size: 0,
                                digits: false,
                                ext: false,
                            }
                        }
                        _ => {
                            self.off();
                            return;
                        }
                    }
                }
                At::Trailers { line } => {
                    let b = buf[0];
                    buf = &buf[1..];
                    match b {
                        b'\n' if !line => self.message_done(),
                        b'\n' => self.at = At::Trailers { line: false },
                        b'\r' => {}
                        _ => self.at = At::Trailers { line: true },
                    }
                }
            }
        }
    }

    /// Takes head bytes; returns what is left after the head (the body, the next request).
    fn feed_head<'a>(&mut self, mut buf: &'a [u8]) -> &'a [u8] {
        self.set_phase(Phase::InHead);
        loop {
            let Some(nl) = memchr::memchr(b'\n', buf) else {
                self.partial.extend_from_slice(buf);
                self.head.bytes += buf.len();
                if self.head.lines == 0 && self.partial.len() > self.max_line {
                    self.refuse(RefusedHead::RequestLineTooLong);
                } else if self.head.bytes > self.max_head {
                    self.off();
                }
                return &[];
            };
            let (line_bytes, rest) = buf.split_at(nl + 1);
            buf = rest;
            self.head.bytes += line_bytes.len();
            let done = if self.partial.is_empty() {
                self.head_line(strip_eol(line_bytes))
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(line_bytes);
                let done = self.head_line(strip_eol(&line));
                line.clear();
                if self.partial.is_empty() && self.at != At::Off {
                    // Keep the buffer for the next split line.
                    self.partial = line;
                }
                done
            };
            if self.at != At::Head || done {
                return buf;
            }
            if self.head.bytes > self.max_head {
                self.off();
                return &[];
            }
            if buf.is_empty() {
                return buf;
            }
        }
    }

    /// Takes one head line (without its line ending); true when it ended the head.
    fn head_line(&mut self, line: &[u8]) -> bool {
        if self.head.lines == 0 {
            if line.is_empty() {
                return false;
            }
            self.head.lines = 1;
            if line.len() > self.max_line {
                self.refuse(RefusedHead::RequestLineTooLong);
            } else if line.starts_with(b"PRI ") || line.starts_with(b"CONNECT ") {
                // The HTTP/2 preface, or a tunnel: no more HTTP/1 requests to follow.
                self.off();
            }
            return false;
        }
        if line.is_empty() {
            self.head_done();
            return true;
        }
        self.head.lines += 1;
        let Some(colon) = memchr::memchr(b':', line) else {
            return false;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.eq_ignore_ascii_case(b"content-length") {
            match parse_length(value) {
                Some(n) if self.head.content_length.is_none_or(|prev| prev == n) => self.head.content_length = Some(n),
                _ => self.head.bad_length = true,
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.head.transfer_encoding = true;
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            self.head.upgrade = true;
        }
        false
    }

    fn head_done(&mut self) {
        let head = std::mem::take(&mut self.head);
        if head.transfer_encoding && (head.content_length.is_some() || head.bad_length) {
            self.refuse(RefusedHead::AmbiguousLength);
            return;
        }
        self.heads += 1;
        if head.upgrade || head.bad_length {
            // An upgrade may turn the connection into something else; a bad length is
            // refused by hyper, which then closes.
            self.off();
        } else if head.transfer_encoding {
            self.set_phase(Phase::InBody);
            self.at = At::ChunkSize {
                size: 0,
                digits: false,
                ext: false,
            };
        } else {
            match head.content_length {
                Some(n) if n > 0 => {
                    self.set_phase(Phase::InBody);
                    self.at = At::Fixed(n);
                }
                _ => self.message_done(),
            }
        }
    }

    fn message_done(&mut self) {
        self.at = At::Head;
        self.set_phase(Phase::BetweenRequests);
    }
}

fn strip_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// A Content-Length value as hyper reads it: digits, optional surrounding whitespace.
fn parse_length(value: &[u8]) -> Option<u64> {
    let v = value.trim_ascii();
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// A client stream whose input passes through a [`Scanner`].
#[derive(Debug)]
pub(crate) struct ScannedStream<S> {
    inner: S,
    scanner: Scanner,
}

impl<S> ScannedStream<S> {
    pub(crate) fn new(inner: S, scanner: Scanner) -> Self {
        Self { inner, scanner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ScannedStream<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            this.scanner.feed(&buf.filled()[before..]);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ScannedStream<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scanner() -> (Scanner, Arc<FramingState>) {
        let state = FramingState::new();
        (Scanner::new(state.clone(), 8 * 1024, 32 * 1024), state)
    }

    /// Feeds `input` in pieces of `step` bytes.
    fn feed(input: &[u8], step: usize) -> (Scanner, Arc<FramingState>) {
        let (mut s, state) = scanner();
        for piece in input.chunks(step) {
            s.feed(piece);
        }
        (s, state)
    }

    const STEPS: [usize; 5] = [1, 2, 7, 64, 1 << 20];

    #[test]
    fn counts_heads_through_every_body_framing_at_any_split() {
        let input = b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n\
            POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
            POST /y HTTP/1.1\r\nHost: a\r\ntransfer-encoding: chunked\r\n\r\n\
            5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n\
            GET /z HTTP/1.1\nHost: a\n\n\
            GET /partial HTTP/1.1\r\nHo";
        for step in STEPS {
            let (s, state) = feed(input, step);
            assert_eq!(s.heads, 4, "step {step}");
            assert_eq!(s.at, At::Head, "step {step}");
            assert_eq!(state.phase().0, Phase::InHead, "step {step}");
            assert_eq!(state.refused(5), None);
        }
    }

    #[test]
    fn content_length_with_transfer_encoding_is_refused_in_either_order() {
        for framing in [
            "Content-Length: 4\r\nTransfer-Encoding: chunked",
            "Transfer-Encoding: chunked\r\nContent-Length: 4",
            "content-length: 0\r\ntransfer-encoding: chunked",
            "Transfer-Encoding: chunked\r\nContent-Length: x",
        ] {
            let input = format!(
                "GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST / HTTP/1.1\r\nHost: a\r\n{framing}\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            );
            for step in STEPS {
                let (s, state) = feed(input.as_bytes(), step);
                assert_eq!(state.refused(1), None, "{framing} step {step}");
                assert_eq!(
                    state.refused(2),
                    Some(RefusedHead::AmbiguousLength),
                    "{framing} step {step}"
                );
                assert_eq!(s.at, At::Off);
                assert_eq!(state.phase().0, Phase::Untracked);
            }
        }
    }

    #[test]
    fn a_long_request_line_is_refused_even_while_it_trickles() {
        let target = "a".repeat(9000);
        let input = format!("GET /{target} HTTP/1.1\r\nHost: a\r\n\r\n");
        for step in STEPS {
            let (_, state) = feed(input.as_bytes(), step);
            assert_eq!(state.refused(1), Some(RefusedHead::RequestLineTooLong), "step {step}");
        }
        let ok = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(8000));
        let (s, state) = feed(ok.as_bytes(), 100);
        assert_eq!((s.heads, state.refused(1)), (1, None));
    }

    #[test]
    fn phases_follow_the_request() {
        let (mut s, state) = scanner();
        assert_eq!(state.phase(), (Phase::BetweenRequests, 0));
        s.feed(b"POST / HTTP/1.1\r\nContent-");
        assert_eq!(state.phase().0, Phase::InHead);
        s.feed(b"Length: 3\r\n\r\nab");
        assert_eq!(state.phase().0, Phase::InBody);
        s.feed(b"c");
        assert_eq!(state.phase(), (Phase::BetweenRequests, 3));
    }

    #[test]
    fn preface_upgrade_and_oversized_heads_turn_it_off() {
        for input in [
            &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\x81\x05hello",
            b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
        ] {
            let (s, state) = feed(input, 3);
            assert_eq!(s.at, At::Off);
            assert_eq!(state.phase().0, Phase::Untracked);
        }
        let big = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "b".repeat(40 * 1024));
        let (s, state) = feed(big.as_bytes(), 1000);
        assert_eq!((s.at, state.refused(1)), (At::Off, None));
        assert!(s.partial.capacity() == 0, "the buffer is let go when off");
    }

    #[test]
    fn a_trickled_head_keeps_only_its_current_line() {
        let (mut s, _) = scanner();
        for b in b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: abc" {
            s.feed(std::slice::from_ref(b));
        }
        assert_eq!(s.partial, b"X-Slow: abc");
    }

    /// One request of a generated connection.
    #[derive(Debug, Clone)]
    enum Framing {
        None,
        Length(usize),
        Chunked(Vec<usize>, bool),
    }

    /// Body bytes that look like requests, so a scanner that lost the framing would see
    /// a refused head in them.
    const DECOY: &[u8] = b"\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";

    fn body(n: usize) -> Vec<u8> {
        DECOY.iter().copied().cycle().take(n).collect()
    }

    fn serialise(reqs: &[(Framing, bool)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, (framing, bare_lf)) in reqs.iter().enumerate() {
            let eol: &[u8] = if *bare_lf { b"\n" } else { b"\r\n" };
            let line = |out: &mut Vec<u8>, text: &str| {
                out.extend_from_slice(text.as_bytes());
                out.extend_from_slice(eol);
            };
            line(&mut out, &format!("POST /r{i} HTTP/1.1"));
            line(&mut out, "Host: a");
            match framing {
                Framing::None => {}
                Framing::Length(n) => line(&mut out, &format!("Content-Length: {n}")),
                Framing::Chunked(..) => line(&mut out, "Transfer-Encoding: chunked"),
            }
            line(&mut out, "X-Pad: upgrade content-length");
            line(&mut out, "");
            match framing {
                Framing::None => {}
                Framing::Length(n) => out.extend_from_slice(&body(*n)),
                Framing::Chunked(chunks, trailer) => {
                    for (j, c) in chunks.iter().enumerate() {
                        let ext = if j % 2 == 1 { ";name=v" } else { "" };
                        out.extend_from_slice(format!("{c:x}{ext}\r\n").as_bytes());
                        out.extend_from_slice(&body(*c));
                        out.extend_from_slice(b"\r\n");
                    }
                    out.extend_from_slice(b"0\r\n");
                    if *trailer {
                        out.extend_from_slice(b"X-Trailer: t\r\n");
                    }
                    out.extend_from_slice(b"\r\n");
                }
            }
        }
        out
    }

    fn framing() -> impl proptest::strategy::Strategy<Value = (Framing, bool)> {
        use proptest::prelude::*;
        (
            prop_oneof![
                Just(Framing::None),
                (0usize..3000).prop_map(Framing::Length),
                (proptest::collection::vec(1usize..700, 0..5), any::<bool>()).prop_map(|(c, t)| Framing::Chunked(c, t)),
            ],
            any::<bool>(),
        )
    }

    /// hyper reads the same connection through the scanner: every request is served, none
    /// is refused, and the scanner counts exactly hyper's requests, at any split of the input.
    fn agrees_with_hyper(reqs: Vec<(Framing, bool)>, cuts: Vec<usize>) {
        use http_body_util::BodyExt;
        use tokio::io::AsyncWriteExt;

        let input = serialise(&reqs);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (client, server) = tokio::io::duplex(1 << 20);
            let state = FramingState::new();
            let stream = ScannedStream::new(server, Scanner::new(state.clone(), 8 * 1024, 32 * 1024));
            let served = Arc::new(std::sync::Mutex::new(Vec::new()));
            let (svc_state, svc_served) = (state.clone(), served.clone());
            let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let (state, served) = (svc_state.clone(), svc_served.clone());
                async move {
                    let n = served.lock().unwrap().len() as u64 + 1;
                    let refused = state.refused(n);
                    let path = req.uri().path().to_owned();
                    let len = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes().len())
                        .unwrap_or(usize::MAX);
                    served.lock().unwrap().push((path, len, refused));
                    Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
                }
            });
            // Half-close on: the client's EOF right after its last request must not cancel it.
            let conn = hyper::server::conn::http1::Builder::new()
                .half_close(true)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let server = tokio::spawn(conn);
            let (mut rd, mut wr) = tokio::io::split(client);
            let drain = tokio::spawn(async move {
                let mut sink = Vec::new();
                let _ = tokio::io::AsyncReadExt::read_to_end(&mut rd, &mut sink).await;
            });
            let mut at = 0;
            for cut in cuts {
                let end = (at + cut).min(input.len());
                wr.write_all(&input[at..end]).await.unwrap();
                wr.flush().await.unwrap();
                tokio::task::yield_now().await;
                at = end;
            }
            wr.write_all(&input[at..]).await.unwrap();
            wr.shutdown().await.unwrap();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), server).await;
            drain.abort();
            let served = served.lock().unwrap().clone();
            assert_eq!(served.len(), reqs.len(), "hyper served {served:?}");
            for (i, ((path, len, refused), (framing, _))) in served.iter().zip(&reqs).enumerate() {
                assert_eq!(path, &format!("/r{i}"));
                assert_eq!(*refused, None, "request {i} refused");
                let want = match framing {
                    Framing::None => 0,
                    Framing::Length(n) => *n,
                    Framing::Chunked(c, _) => c.iter().sum(),
                };
                assert_eq!(*len, want, "request {i} body");
            }
            assert_eq!(state.phase().0, Phase::BetweenRequests);
        });
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(96))]
        #[test]
        fn scanner_frames_requests_as_hyper_does(
            reqs in proptest::collection::vec(framing(), 1..6),
            cuts in proptest::collection::vec(1usize..400, 0..12),
        ) {
            agrees_with_hyper(reqs, cuts);
        }
    }
}
