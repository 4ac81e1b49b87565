//! Raw HTTP/1.1 on a socket, for tests that must see exactly what a server sends: one
//! exchange read until the server closes, and a small parser of back-to-back responses
//! (Content-Length, chunked or close-delimited).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What came back on one raw connection.
#[derive(Debug)]
pub struct Exchange {
    pub bytes: Vec<u8>,
    /// The server closed (EOF or reset) before the deadline.
    pub closed: bool,
    /// Time from connect to close (or to the deadline).
    pub elapsed: Duration,
}

/// Connects, writes `request` (a write error is ignored: the server may close early), and
/// reads until the server closes or `wait` has passed.
pub async fn exchange(addr: SocketAddr, request: &[u8], wait: Duration) -> Exchange {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).await.expect("connect to canaryd");
    let _ = s.write_all(request).await;
    read_until_close(&mut s, started, started + wait).await
}

pub async fn read_until_close(s: &mut TcpStream, started: Instant, deadline: Instant) -> Exchange {
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => {
                return Exchange {
                    bytes,
                    closed: false,
                    elapsed: started.elapsed(),
                }
            }
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Exchange {
                    bytes,
                    closed: true,
                    elapsed: started.elapsed(),
                }
            }
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
        }
    }
}

/// One parsed HTTP/1.1 response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// False when the body ended before its framing said it would.
    pub complete: bool,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses back-to-back HTTP/1.1 responses (Content-Length, chunked or close-delimited).
pub fn parse_responses(mut buf: &[u8]) -> Vec<Resp> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let Some(end) = find(buf, b"\r\n\r\n") else {
            // A partial head still counts as something the server sent.
            out.push(Resp {
                status: 0,
                headers: Vec::new(),
                body: buf.to_vec(),
                complete: false,
            });
            break;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf = &buf[end + 4..];
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let mut resp = Resp {
            status,
            headers,
            body: Vec::new(),
            complete: true,
        };
        if (100..200).contains(&status) || status == 204 || status == 304 {
            out.push(resp);
            continue;
        }
        let chunked = resp
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        let cl = resp.header("content-length").and_then(|v| v.parse::<usize>().ok());
        if chunked {
            resp.complete = false;
            loop {
                let Some(eol) = find(buf, b"\r\n") else {
                    buf = &[];
                    break;
                };
                let size_line = String::from_utf8_lossy(&buf[..eol]).into_owned();
                let size_text = size_line.split(';').next().unwrap_or("").trim();
                let Ok(size) = usize::from_str_radix(size_text, 16) else {
                    buf = &[];
                    break;
                };
                buf = &buf[eol + 2..];
                if size == 0 {
                    if buf.starts_with(b"\r\n") {
                        buf = &buf[2..];
                        resp.complete = true;
                    } else if let Some(t) = find(buf, b"\r\n\r\n") {
                        buf = &buf[t + 4..];
                        resp.complete = true;
                    } else {
                        buf = &[];
                    }
                    break;
                }
                if buf.len() < size + 2 {
                    resp.body.extend_from_slice(&buf[..size.min(buf.len())]);
                    buf = &[];
                    break;
                }
                resp.body.extend_from_slice(&buf[..size]);
                buf = &buf[size + 2..];
            }
        } else if let Some(cl) = cl {
            let n = cl.min(buf.len());
            resp.body = buf[..n].to_vec();
            resp.complete = n == cl;
            buf = &buf[n..];
        } else {
            resp.body = buf.to_vec();
            buf = &[];
        }
        out.push(resp);
    }
    out
}

/// Printable rendering of raw bytes for failure messages.
pub fn show(bytes: &[u8]) -> String {
    let text: String = bytes
        .iter()
        .take(400)
        .flat_map(|&b| std::ascii::escape_default(b))
        .map(char::from)
        .collect();
    if bytes.len() > 400 {
        format!("{text}… ({} bytes)", bytes.len())
    } else {
        text
    }
}
