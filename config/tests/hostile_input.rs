//! Config that tries injection (newlines, `{`, `;`, `../`, NUL, spaces) is refused by
//! validation with the field named, and the connection limits refuse values out of range.
//! canaryd never writes a user string into a file path or another program's config: names,
//! hosts and paths are matched and echoed only, so refusing them here is the whole defence.

use canary_config::parse;

/// The paths of the errors `yaml` gets (empty when it is valid).
fn error_paths(yaml: &str) -> Vec<String> {
    match parse(yaml) {
        Ok(_) => Vec::new(),
        Err(e) => e.field_errors().iter().map(|f| f.path.clone()).collect(),
    }
}

fn route(field: &str, value: &str) -> String {
    let (name, host, prefix) = match field {
        "name" => (value, "app.example.com", "/"),
        "hosts" => ("app", value, "/"),
        _ => ("app", "app.example.com", value),
    };
    // JSON strings are YAML strings, so every byte arrives as written.
    let (name, host, prefix) = (
        serde_json::to_string(name).unwrap(),
        serde_json::to_string(host).unwrap(),
        serde_json::to_string(prefix).unwrap(),
    );
    format!(
        "routes:\n  - name: {name}\n    hosts: [{host}]\n    path_prefix: {prefix}\n    stable: {{ endpoints: [\"10.0.0.1:80\"] }}\n"
    )
}

#[test]
fn injection_shaped_names_hosts_and_paths_are_refused_with_their_field() {
    let attempts = [
        "a\nb",
        "a\r\nX-Injected: 1",
        "a{b}",
        "a;b",
        "../etc/passwd",
        "a\0b",
        "a b",
        "$(reboot)",
    ];
    for (field, path) in [
        ("name", "routes[0].name"),
        ("hosts", "routes[0].hosts[0]"),
        ("path_prefix", "routes[0].path_prefix"),
    ] {
        for bad in attempts {
            // A path prefix must start with '/': try each attempt behind one as well.
            let values = if field == "path_prefix" {
                vec![bad.to_string(), format!("/{bad}")]
            } else {
                vec![bad.to_string()]
            };
            for value in values {
                let errs = error_paths(&route(field, &value));
                assert_eq!(errs, vec![path.to_string()], "{field} = {value:?} gave {errs:?}");
            }
        }
    }
    assert!(error_paths(&route("name", "app-1")).is_empty(), "a plain name is fine");
}

#[test]
fn connection_limits_out_of_range_name_the_field() {
    let with = |limits: &str| {
        format!("limits: {{ {limits} }}\nroutes:\n  - name: app\n    stable: {{ endpoints: [\"10.0.0.1:80\"] }}\n")
    };
    assert!(error_paths(&with("h2_stream_window_bytes: 65536, max_requests_per_connection: 0")).is_empty());
    for (limits, field) in [
        ("h2_stream_window_bytes: 1024", "limits.h2_stream_window_bytes"),
        ("h2_connection_window_bytes: 1024", "limits.h2_connection_window_bytes"),
        (
            "h2_stream_window_bytes: 2097152, h2_connection_window_bytes: 1048576",
            "limits.h2_connection_window_bytes",
        ),
        ("max_header_count: 0", "limits.max_header_count"),
        ("max_request_line_bytes: 512", "limits.max_request_line_bytes"),
        (
            "max_header_bytes: 16384, max_request_line_bytes: 16385",
            "limits.max_request_line_bytes",
        ),
    ] {
        assert_eq!(error_paths(&with(limits)), vec![field.to_string()], "{limits}");
    }
    // Too large a stream window is refused, and so is the default connection window below it.
    assert_eq!(
        error_paths(&with("h2_stream_window_bytes: 33554432")),
        ["limits.h2_stream_window_bytes", "limits.h2_connection_window_bytes"]
    );
    let unknown = parse(&with("max_requests_per_conection: 5")).unwrap_err().to_string();
    assert!(unknown.contains("max_requests_per_conection"), "{unknown}");
}

#[test]
fn header_read_timeout_is_read_and_checked() {
    let with = |timeouts: &str| {
        format!("timeouts: {{ {timeouts} }}\nroutes:\n  - name: app\n    stable: {{ endpoints: [\"10.0.0.1:80\"] }}\n")
    };
    let config = parse(&with("header_read: 3s, idle: 20s")).unwrap();
    assert_eq!(config.timeouts.header_read, std::time::Duration::from_secs(3));
    assert_eq!(config.timeouts.idle, std::time::Duration::from_secs(20));
    let default = parse(&with("idle: 20s")).unwrap();
    assert_eq!(default.timeouts.header_read, std::time::Duration::from_secs(10));
    for bad in ["0s", "soon", "-1s"] {
        assert_eq!(
            error_paths(&with(&format!("header_read: {bad}"))),
            ["timeouts.header_read"],
            "{bad}"
        );
    }
}
