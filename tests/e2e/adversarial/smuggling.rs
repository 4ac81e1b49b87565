//! Request smuggling and ambiguous framing: one 400, nothing reaches the backend.

use super::*;

/// Content-Length together with Transfer-Encoding, in either order, with any length (even
/// one that is not a number): one 400, the connection closed, nothing forwarded; also when
/// it is the second request on a connection whose first was served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_is_rejected() {
    let (backend, proxy) = setup("").await;
    let body = chunked_hello_then_smuggle();
    let mut cases = Vec::new();
    for (label, framing) in [
        ("CL then TE", "Content-Length: 4\r\nTransfer-Encoding: chunked"),
        ("TE then CL", "Transfer-Encoding: chunked\r\nContent-Length: 4"),
        ("CL 0 with TE", "Content-Length: 0\r\nTransfer-Encoding: chunked"),
        ("TE then bad CL", "Transfer-Encoding: chunked\r\nContent-Length: four"),
        (
            "lower case, TE gzip, chunked",
            "content-length: 4\r\ntransfer-encoding: gzip, chunked",
        ),
    ] {
        let request = format!("POST /echo-body HTTP/1.1\r\nHost: app\r\n{framing}\r\n\r\n{body}");
        cases.push((label, request.into_bytes()));
    }
    expect_all_rejected(&proxy, &backend, &cases, &[400]).await;

    // Second on a keep-alive connection: the first is answered, the second refused.
    let before = backend.count();
    let request = format!(
        "GET /first HTTP/1.1\r\nHost: app\r\n\r\n\
         POST /echo-body HTTP/1.1\r\nHost: app\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
    );
    let ex = exchange(proxy.addr, request.as_bytes(), Duration::from_secs(3)).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let statuses: Vec<u16> = parse_responses(&ex.bytes).iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 400], "client got {}", show(&ex.bytes));
    assert!(ex.closed, "connection left open after the refusal");
    assert_eq!(targets_since(&backend, before), ["GET /first"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_content_lengths_are_rejected() {
    let (backend, proxy) = setup("").await;
    let cases = [
        (
            "two differing CL headers",
            format!("POST /echo-body HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!{SMUGGLED}")
                .into_bytes(),
        ),
        (
            "CL list 1, 2",
            format!("POST /echo-body HTTP/1.1\r\nHost: app\r\nContent-Length: 1, 2\r\n\r\nab{SMUGGLED}").into_bytes(),
        ),
        (
            "CL +5",
            format!("POST /echo-body HTTP/1.1\r\nHost: app\r\nContent-Length: +5\r\n\r\nhello{SMUGGLED}").into_bytes(),
        ),
        (
            "CL -1",
            format!("POST /echo-body HTTP/1.1\r\nHost: app\r\nContent-Length: -1\r\n\r\nhello{SMUGGLED}").into_bytes(),
        ),
        (
            "CL 0x5",
            format!("POST /echo-body HTTP/1.1\r\nHost: app\r\nContent-Length: 0x5\r\n\r\nhello{SMUGGLED}").into_bytes(),
        ),
    ];
    expect_all_rejected(&proxy, &backend, &cases, &[400]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_encoding_other_than_final_chunked_is_rejected() {
    let (backend, proxy) = setup("").await;
    let body = chunked_hello_then_smuggle();
    let te = |value: &str| {
        format!("POST /echo-body HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: {value}\r\n\r\n{body}").into_bytes()
    };
    let cases = [
        ("gzip", te("gzip")),
        ("chunked, gzip", te("chunked, gzip")),
        ("xchunked", te("xchunked")),
        ("chunkedx", te("chunkedx")),
        ("identity", te("identity")),
        ("chunked<VT>", te("chunked\x0b")),
        ("<FF>chunked", te("\x0cchunked")),
        (
            "two TE lines chunked then gzip",
            format!(
                "POST /echo-body HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n{body}"
            )
            .into_bytes(),
        ),
        (
            "TE on HTTP/1.0",
            format!("POST /echo-body HTTP/1.0\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n{body}").into_bytes(),
        ),
    ];
    expect_all_rejected(&proxy, &backend, &cases, &[400, 501]).await;
}

/// `chunked` applied twice is not a valid coding list (RFC 9112 §7: a sender MUST NOT apply
/// chunked more than once); a proxy that decodes it once and drops the outer coding hands
/// the backend a body the client never meant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_encoding_chunked_twice_is_rejected() {
    let (backend, proxy) = setup("").await;
    let cases = [(
        "chunked, chunked",
        format!(
            "POST /echo-body HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked, chunked\r\n\r\n{}",
            chunked_hello_then_smuggle()
        )
        .into_bytes(),
    )];
    expect_all_rejected(&proxy, &backend, &cases, &[400, 501]).await;
}

/// `chunked` surrounded by optional whitespace or in another case *is* a final `chunked`
/// (RFC 9110 §5.5 strips OWS, codings are case-insensitive): it may be rejected, but if it
/// is accepted the body must be read as chunked, so the next pipelined request is served
/// as a request of its own and nothing else is seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_with_whitespace_or_case_is_read_as_chunked_without_desync() {
    let (backend, proxy) = setup("").await;
    let mut failures = Vec::new();
    for value in ["chunked ", " chunked", "chunked\t", "Chunked", "CHUNKED"] {
        let before = backend.count();
        let request = format!(
            "POST /echo-body HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: {value}\r\n\r\n5\r\nhello\r\n0\r\n\r\n\
             GET /after HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n"
        );
        let ex = exchange(proxy.addr, request.as_bytes(), Duration::from_secs(3)).await;
        let responses = parse_responses(&ex.bytes);
        let seen = targets_since(&backend, before);
        let rejected = responses.len() == 1 && responses[0].status == 400 && seen.is_empty();
        let chunked_ok = responses.len() == 2
            && responses[0].status == 200
            && responses[0].text() == "5"
            && responses[1].status == 200
            && seen == ["POST /echo-body", "GET /after"];
        if !(rejected || chunked_ok) {
            failures.push(format!(
                "[TE {value:?}] backend saw {seen:?}; client got {}",
                show(&ex.bytes)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obs_fold_is_rejected() {
    let (backend, proxy) = setup("").await;
    let body = chunked_hello_then_smuggle();
    let cases = [
        (
            "fold with space",
            format!("GET / HTTP/1.1\r\nHost: app\r\nX-A: a\r\n b\r\n\r\n{SMUGGLED}").into_bytes(),
        ),
        (
            "fold with tab",
            format!("GET / HTTP/1.1\r\nHost: app\r\nX-A: a\r\n\tb\r\n\r\n{SMUGGLED}").into_bytes(),
        ),
        (
            "folded Transfer-Encoding",
            format!("POST /echo-body HTTP/1.1\r\nHost: app\r\nTransfer-Encoding:\r\n chunked\r\n\r\n{body}")
                .into_bytes(),
        ),
        (
            "folded Content-Length",
            format!("POST /echo-body HTTP/1.1\r\nHost: app\r\nContent-Length:\r\n 5\r\n\r\nhello{SMUGGLED}")
                .into_bytes(),
        ),
    ];
    expect_all_rejected(&proxy, &backend, &cases, &[400]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_and_bare_cr_in_header_values_are_rejected() {
    let (backend, proxy) = setup("").await;
    let cases = [
        (
            "NUL in value",
            format!("GET / HTTP/1.1\r\nHost: app\r\nX-A: a\0b\r\n\r\n{SMUGGLED}").into_bytes(),
        ),
        (
            "bare CR in value",
            format!("GET / HTTP/1.1\r\nHost: app\r\nX-A: a\rb\r\n\r\n{SMUGGLED}").into_bytes(),
        ),
        (
            "bare CR before CL",
            format!("POST /echo-body HTTP/1.1\r\nHost: app\r\nX-A: a\rContent-Length: 5\r\n\r\nhello{SMUGGLED}")
                .into_bytes(),
        ),
        (
            "NUL in Host",
            format!("GET / HTTP/1.1\r\nHost: app\0evil\r\n\r\n{SMUGGLED}").into_bytes(),
        ),
    ];
    expect_all_rejected(&proxy, &backend, &cases, &[400]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whitespace_between_header_name_and_colon_is_rejected() {
    let (backend, proxy) = setup("").await;
    let cases = [
        (
            "Content-Length SP :",
            format!("POST /echo-body HTTP/1.1\r\nHost: app\r\nContent-Length : 5\r\n\r\nhello{SMUGGLED}").into_bytes(),
        ),
        (
            "Transfer-Encoding HTAB :",
            format!(
                "POST /echo-body HTTP/1.1\r\nHost: app\r\nTransfer-Encoding\t: chunked\r\n\r\n{}",
                chunked_hello_then_smuggle()
            )
            .into_bytes(),
        ),
        (
            "Host SP :",
            format!("GET / HTTP/1.1\r\nHost : app\r\n\r\n{SMUGGLED}").into_bytes(),
        ),
    ];
    expect_all_rejected(&proxy, &backend, &cases, &[400]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_host_on_http11_is_rejected() {
    let (backend, proxy) = setup("").await;
    let cases = [("no Host", b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec())];
    expect_all_rejected(&proxy, &backend, &cases, &[400]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_host_headers_are_rejected() {
    let (backend, proxy) = setup("").await;
    let cases = [
        (
            "two Host lines",
            b"GET / HTTP/1.1\r\nHost: app\r\nHost: evil.test\r\nConnection: close\r\n\r\n".to_vec(),
        ),
        (
            "two Host lines, same value",
            b"GET / HTTP/1.1\r\nHost: app\r\nHost: app\r\nConnection: close\r\n\r\n".to_vec(),
        ),
    ];
    expect_all_rejected(&proxy, &backend, &cases, &[400]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_host_values_are_rejected() {
    let (backend, proxy) = setup("").await;
    let host = |value: &str| format!("GET / HTTP/1.1\r\nHost: {value}\r\nConnection: close\r\n\r\n").into_bytes();
    let cases = [
        ("space", host("app evil.test")),
        ("comma list", host("app, evil.test")),
        ("userinfo", host("user@app")),
        ("path", host("app/evil")),
        ("bad port", host("app:80x")),
        ("empty", host("")),
    ];
    expect_all_rejected(&proxy, &backend, &cases, &[400]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_method_tokens_are_rejected() {
    let (backend, proxy) = setup("").await;
    let method = |m: &str| format!("{m} / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n").into_bytes();
    let cases = [
        ("G(ET", method("G(ET")),
        ("GE\"T", method("GE\"T")),
        ("[GET]", method("[GET]")),
        ("GET<DEL>", method("GET\x7f")),
        ("GET<NUL>", method("GET\0")),
        ("G<TAB>ET", method("G\tET")),
        ("G/ET", method("G/ET")),
    ];
    expect_all_rejected(&proxy, &backend, &cases, &[400, 501]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_versions_are_rejected() {
    let (backend, proxy) = setup("").await;
    let version = |v: &str| format!("GET / {v}\r\nHost: app\r\nConnection: close\r\n\r\n").into_bytes();
    let cases = [
        ("HTTP/1.2", version("HTTP/1.2")),
        ("HTTP/2.0", version("HTTP/2.0")),
        ("HTTP/3", version("HTTP/3")),
        ("http/1.1", version("http/1.1")),
        ("HTTP/1.10", version("HTTP/1.10")),
        ("HTTP/01.1", version("HTTP/01.1")),
        ("XTTP/1.1", version("XTTP/1.1")),
        ("garbage", version("\x01\x02garbage")),
        ("HTTP/0.9 style (no version)", b"GET /\r\n\r\n".to_vec()),
    ];
    expect_all_rejected(&proxy, &backend, &cases, &[400, 505]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_is_routed_by_its_authority_and_host_follows() {
    let a = Backend::new("a").start().await;
    let b = Backend::new("b").start().await;
    let proxy = Canaryd::start(&Canaryd::config(&format!(
        "routes:\n  - name: a\n    hosts: [a.test]\n    stable: {{ endpoints: [\"{}\"] }}\n  - name: b\n    hosts: [b.test]\n    stable: {{ endpoints: [\"{}\"] }}\n",
        a.endpoint(),
        b.endpoint()
    )));
    for (target, want_host) in [
        ("http://b.test/x?y=1", "b.test"),
        ("http://b.test:8080/x?y=1", "b.test:8080"),
    ] {
        let before = b.count();
        let ex = exchange(
            proxy.addr,
            format!("GET {target} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n").as_bytes(),
            Duration::from_secs(3),
        )
        .await;
        let responses = parse_responses(&ex.bytes);
        assert_eq!(responses.len(), 1, "{target}: {}", show(&ex.bytes));
        assert_eq!(responses[0].status, 200, "{target}: {}", show(&ex.bytes));
        assert_eq!(responses[0].text(), "b", "{target}: routed by the authority, not Host");
        let seen = &b.requests()[before..];
        assert_eq!(seen.len(), 1, "{target}");
        assert_eq!(seen[0].target, "/x?y=1");
        assert_eq!(seen[0].headers.get_all("host").iter().count(), 1);
        assert_eq!(
            seen[0].headers["host"], want_host,
            "{target}: Host equals the authority"
        );
    }
    assert_eq!(a.count(), 0, "nothing routed by the Host header");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_with_userinfo_is_rejected() {
    let (backend, proxy) = setup("").await;
    let cases = [
        (
            "userinfo",
            b"GET http://user@app/x HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n".to_vec(),
        ),
        (
            "userinfo with password",
            b"GET http://app:pw@evil.test/x HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n".to_vec(),
        ),
    ];
    expect_all_rejected(&proxy, &backend, &cases, &[400]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_method_never_reaches_the_backend() {
    let (backend, proxy) = setup("").await;
    let cases = [("CONNECT", b"CONNECT app:443 HTTP/1.1\r\nHost: app:443\r\n\r\n".to_vec())];
    expect_all_rejected(&proxy, &backend, &cases, &[400, 403, 405, 501]).await;
}
