//! HTTP/2 frames written and read by hand (h2c prior knowledge), for tests of what a
//! server does with frames a well-behaved client library would never send.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const GOAWAY: u8 = 0x7;
pub const CONTINUATION: u8 = 0x9;
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const ACK: u8 = 0x1;
pub const CANCEL: u32 = 0x8;
pub const REFUSED_STREAM: u32 = 0x7;
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
pub const WINDOW_UPDATE: u8 = 0x8;

pub fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.push(ty);
    f.push(flags);
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

pub fn rst(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

/// HPACK integer with an N-bit prefix (RFC 7541 §5.1).
fn int(out: &mut Vec<u8>, prefix_bits: u8, flags: u8, mut v: usize) {
    let max = (1usize << prefix_bits) - 1;
    if v < max {
        out.push(flags | v as u8);
        return;
    }
    out.push(flags | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

fn string(out: &mut Vec<u8>, s: &[u8]) {
    int(out, 7, 0, s.len());
    out.extend_from_slice(s);
}

/// Literal header field without indexing, name from the static table.
fn literal_indexed_name(out: &mut Vec<u8>, index: usize, value: &[u8]) {
    int(out, 4, 0, index);
    string(out, value);
}

/// Literal header field without indexing, new name.
pub fn literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0);
    string(out, name);
    string(out, value);
}

/// `GET path` for `authority` over http, no dynamic table use.
pub fn get_block(authority: &str, path: &str) -> Vec<u8> {
    // 0x82 = :method GET, 0x86 = :scheme http (static table indexes 2 and 6).
    let mut b = vec![0x82, 0x86];
    literal_indexed_name(&mut b, 4, path.as_bytes()); // :path
    literal_indexed_name(&mut b, 1, authority.as_bytes()); // :authority
    b
}

pub fn get(stream: u32, authority: &str, path: &str) -> Vec<u8> {
    frame(HEADERS, END_STREAM | END_HEADERS, stream, &get_block(authority, path))
}

pub const DATA: u8 = 0x0;
pub const PING: u8 = 0x6;

/// `POST path` for `authority` over http plus `extra` fields (new names), no dynamic table use.
pub fn post_block(authority: &str, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    // 0x83 = :method POST, 0x86 = :scheme http (static table indexes 3 and 6).
    let mut b = vec![0x83, 0x86];
    literal_indexed_name(&mut b, 4, path.as_bytes()); // :path
    literal_indexed_name(&mut b, 1, authority.as_bytes()); // :authority
    for (name, value) in extra {
        literal(&mut b, name.as_bytes(), value.as_bytes());
    }
    b
}

/// The `:status` of a response header block when it is a static-table index (the
/// encoder's choice for 200, 204, 206, 304, 400, 404, 500); 0 for any other status.
pub fn static_status(block: &[u8]) -> u16 {
    match block.first() {
        Some(b @ 0x88..=0x8e) => [200, 204, 206, 304, 400, 404, 500][(b - 0x88) as usize],
        _ => 0,
    }
}

/// What came back on one stream.
#[derive(Debug, Default, Clone)]
pub struct StreamSeen {
    /// From the first HEADERS frame (see [`static_status`]).
    pub status: Option<u16>,
    pub body: Vec<u8>,
    /// END_STREAM seen from the server.
    pub ended: bool,
    /// Error code of a RST_STREAM from the server.
    pub rst: Option<u32>,
}

/// Reads frames on `s` until each of `streams` has ended or been reset, the connection
/// ends, or `deadline`; PINGs are acked. Returns per-stream results and the first GOAWAY.
pub async fn collect(
    s: &mut TcpStream,
    streams: &[u32],
    deadline: Instant,
) -> (std::collections::HashMap<u32, StreamSeen>, Option<(u32, u32)>) {
    let mut seen: std::collections::HashMap<u32, StreamSeen> =
        streams.iter().map(|&id| (id, StreamSeen::default())).collect();
    let mut goaway = None;
    while seen.values().any(|st| !st.ended && st.rst.is_none()) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Ok(f)) = tokio::time::timeout(left, read_frame(s)).await else {
            break;
        };
        if f.ty == PING && f.flags & ACK == 0 {
            let _ = s.write_all(&frame(PING, ACK, 0, &f.payload)).await;
        }
        if f.ty == GOAWAY && goaway.is_none() && f.payload.len() >= 8 {
            let last = u32::from_be_bytes(f.payload[..4].try_into().unwrap()) & 0x7fff_ffff;
            goaway = Some((last, u32::from_be_bytes(f.payload[4..8].try_into().unwrap())));
        }
        let Some(st) = seen.get_mut(&f.stream) else {
            continue;
        };
        match f.ty {
            HEADERS => {
                if st.status.is_none() {
                    st.status = Some(static_status(&f.payload));
                }
                st.ended |= f.flags & END_STREAM != 0;
            }
            DATA => {
                st.body.extend_from_slice(&f.payload);
                st.ended |= f.flags & END_STREAM != 0;
            }
            RST_STREAM if f.payload.len() == 4 => {
                st.rst = Some(u32::from_be_bytes(f.payload[..4].try_into().unwrap()));
            }
            _ => {}
        }
    }
    (seen, goaway)
}

#[derive(Debug)]
pub struct Frame {
    pub ty: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Frame> {
    let mut head = [0u8; 9];
    r.read_exact(&mut head).await?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok(Frame {
        ty: head[3],
        flags: head[4],
        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
        payload,
    })
}

pub fn settings_pairs(payload: &[u8]) -> Vec<(u16, u32)> {
    payload
        .chunks_exact(6)
        .map(|c| {
            (
                u16::from_be_bytes([c[0], c[1]]),
                u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
            )
        })
        .collect()
}

/// Connects, sends the preface and empty SETTINGS, reads the server's SETTINGS and acks them.
pub async fn handshake(addr: SocketAddr) -> (TcpStream, Vec<(u16, u32)>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    s.write_all(&hello).await.unwrap();
    let settings = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let f = read_frame(&mut s).await.expect("server frames");
            if f.ty == SETTINGS && f.flags & ACK == 0 {
                return settings_pairs(&f.payload);
            }
        }
    })
    .await
    .expect("server SETTINGS within 5 s");
    s.write_all(&frame(SETTINGS, ACK, 0, &[])).await.unwrap();
    (s, settings)
}

/// What the server sent on an attacked connection.
#[derive(Debug, Default)]
pub struct Seen {
    /// (last stream id, error code) of the first GOAWAY.
    pub goaway: Option<(u32, u32)>,
    pub goaway_at: Option<Duration>,
    /// When the server's side ended (EOF or reset).
    pub closed_at: Option<Duration>,
    pub headers: usize,
    pub rst: usize,
    pub refused: usize,
}

impl Seen {
    pub fn cut(&self) -> bool {
        self.goaway.is_some() || self.closed_at.is_some()
    }
}

/// Reads frames until the connection ends, recording what matters.
pub fn spawn_reader(
    mut r: tokio::net::tcp::OwnedReadHalf,
    started: Instant,
) -> (Arc<Mutex<Seen>>, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s2 = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            match read_frame(&mut r).await {
                Ok(f) => {
                    let mut s = s2.lock().unwrap();
                    match f.ty {
                        HEADERS => s.headers += 1,
                        RST_STREAM => {
                            s.rst += 1;
                            if f.payload.len() == 4
                                && u32::from_be_bytes(f.payload[..4].try_into().unwrap()) == REFUSED_STREAM
                            {
                                s.refused += 1;
                            }
                        }
                        GOAWAY if s.goaway.is_none() && f.payload.len() >= 8 => {
                            let last = u32::from_be_bytes(f.payload[..4].try_into().unwrap()) & 0x7fff_ffff;
                            let code = u32::from_be_bytes(f.payload[4..8].try_into().unwrap());
                            s.goaway = Some((last, code));
                            s.goaway_at = Some(started.elapsed());
                        }
                        _ => {}
                    }
                    let _ = f.stream;
                }
                Err(_) => {
                    s2.lock().unwrap().closed_at = Some(started.elapsed());
                    return;
                }
            }
        }
    });
    (seen, task)
}
