//! Never the reason a cluster breaks: certificate rotation, mTLS, timeouts and connection limits, against the real
//! binary.

mod common;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use default_deny_guard::certs::{CertificateSet, Subject};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn localhost_pair(days: u32) -> CertificateSet {
    CertificateSet::generate(&Subject {
        dns_names: vec!["localhost".into()],
        ips: vec!["127.0.0.1".parse().unwrap()],
        days,
    })
    .unwrap()
}

/// Lays out a certificate as a Secret volume does: files behind a `..data` symlink that is swapped atomically.
fn publish(dir: &Path, version: &str, set: &CertificateSet) {
    let target = dir.join(format!("..{version}"));
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("tls.crt"), &set.cert_pem).unwrap();
    std::fs::write(target.join("tls.key"), &set.key_pem).unwrap();
    std::fs::write(target.join("ca.crt"), &set.ca_pem).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(format!("..{version}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for file in ["tls.crt", "tls.key", "ca.crt"] {
        if !dir.join(file).exists() {
            symlink(format!("..data/{file}"), dir.join(file)).unwrap();
        }
    }
}

fn client_trusting(pems: &[&str]) -> Https {
    let mut roots = rustls::RootCertStore::empty();
    for pem in pems {
        for c in rustls::pki_types::pem::PemObject::pem_slice_iter(pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Https::with_config(config, Protocol::Http1)
}

async fn try_get(client: &Https, url: &str) -> bool {
    tokio::time::timeout(Duration::from_secs(5), client.try_request("GET", url, None, vec![]))
        .await
        .is_ok_and(|r| r.is_ok_and(|r| r.status == 200))
}

#[tokio::test]
async fn rotated_certificate_is_served_without_restart_and_a_broken_one_is_rejected() {
    let first = localhost_pair(30);
    let second = localhost_pair(60);
    let mut guard_dir = None;
    let guard = Guard::start_with(
        &["--tls-cert", "tls/tls.crt", "--tls-key", "tls/tls.key", "--tls-reload-interval", "100ms"],
        |dir| {
            std::fs::create_dir_all(dir.join("tls")).unwrap();
            publish(&dir.join("tls"), "v1", &first);
            guard_dir = Some(dir.join("tls"));
        },
    );
    let tls_dir = guard_dir.unwrap();
    let url = guard.url("/healthz");
    assert!(try_get(&client_trusting(&[&first.ca_pem]), &url).await);
    assert!(!try_get(&client_trusting(&[&second.ca_pem]), &url).await, "not yet the second certificate");

    // Requests keep flowing during the swap, from a client that trusts both CAs: none may fail.
    let both = Arc::new(client_trusting(&[&first.ca_pem, &second.ca_pem]));
    let review = Review::network_policy("CREATE", "kube-system", "d")
        .object(network_policy("kube-system", "d", deny_all_spec()))
        .json();
    let traffic = {
        let (both, url) = (both.clone(), guard.url("/validate"));
        tokio::spawn(async move {
            let (mut sent, mut failed) = (0, 0);
            let until = Instant::now() + Duration::from_secs(2);
            while Instant::now() < until {
                sent += 1;
                let body = serde_json::to_vec(&review).unwrap();
                match both.try_request("POST", &url, Some("application/json"), body).await {
                    Ok(r) if r.status == 200 => {}
                    _ => failed += 1,
                }
            }
            (sent, failed)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    publish(&tls_dir, "v2", &second);
    let second_client = client_trusting(&[&second.ca_pem]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !try_get(&second_client, &url).await {
        assert!(Instant::now() < deadline, "the rotated certificate was never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (sent, failed) = traffic.await.unwrap();
    assert!(sent > 10, "{sent}");
    assert_eq!(failed, 0, "{failed} of {sent} requests failed during the rotation");

    let text = guard.metrics_text().await;
    assert_eq!(metric(&text, "default_deny_guard_tls_reloads_total", &[("result", "success")]), 1.0);
    let expiry = metric(&text, "default_deny_guard_certificate_expiry_timestamp_seconds", &[]);
    let want = default_deny_guard::certs::not_after(second.cert_pem.as_bytes()).unwrap() as f64;
    assert_eq!(expiry, want, "the expiry metric follows the certificate in use");

    // A key that does not belong to the certificate: rejected, logged, counted; the second pair stays.
    let third = localhost_pair(90);
    let broken = CertificateSet { key_pem: localhost_pair(90).key_pem, ..third };
    publish(&tls_dir, "v3", &broken);
    guard.wait_for_log("about the rejected pair", |l| {
        l["message"].as_str().is_some_and(|m| m.starts_with("new serving certificate rejected"))
    });
    let text = guard.metrics_text().await;
    assert_eq!(metric(&text, "default_deny_guard_tls_reloads_total", &[("result", "error")]), 1.0);
    assert!(try_get(&second_client, &url).await, "the previous pair stays in service");
}

/// A CA and a client certificate it signed, as kube-apiserver would present through its admission configuration.
fn client_identity() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["kube-apiserver".to_string()]).unwrap();
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

fn client_with_identity(server_ca: &Path, cert_pem: &str, key_pem: &str) -> Https {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(server_ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let chain = rustls::pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes()).map(Result::unwrap).collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    Https::with_config(config, Protocol::Http1)
}

#[tokio::test]
async fn mtls_answers_only_verified_clients_and_keeps_probes_reachable() {
    let (ca, cert, key) = client_identity();
    let guard = Guard::start_with(&["--client-ca", "client-ca.crt"], |dir| {
        std::fs::write(dir.join("client-ca.crt"), &ca).unwrap();
    });
    let review = Review::network_policy("CREATE", "kube-system", "d").object(network_policy(
        "kube-system",
        "d",
        deny_all_spec(),
    ));

    let anonymous = guard.client();
    let reply = anonymous.review(&guard, "/validate", &review.json()).await;
    assert_eq!(reply.status, 401, "{}", String::from_utf8_lossy(&reply.body));
    assert!(reply.json()["message"].as_str().unwrap().contains("client certificate"));
    assert_eq!(anonymous.get(&guard.url("/healthz")).await.status, 200, "probes need no client certificate");
    assert_eq!(anonymous.get(&guard.url("/readyz")).await.status, 200);

    let apiserver = client_with_identity(&guard.ca_path(), &cert, &key);
    let reply = apiserver.review(&guard, "/validate", &review.json()).await;
    assert_eq!(response_of(&reply, &review)["allowed"], false);

    // A certificate from another CA is refused in the handshake.
    let (_, other_cert, other_key) = client_identity();
    let stranger = client_with_identity(&guard.ca_path(), &other_cert, &other_key);
    let url = guard.url("/validate?timeout=10s");
    let body = serde_json::to_vec(&review.json()).unwrap();
    assert!(stranger.try_request("POST", &url, Some("application/json"), body).await.is_err());
}

async fn closed_within(stream: &mut (impl AsyncReadExt + Unpin), limit: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline.into(), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

async fn tls_connect(guard: &Guard) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_config(&guard.ca_path())));
    let tcp = tokio::net::TcpStream::connect(guard.webhook).await.unwrap();
    connector.connect("localhost".try_into().unwrap(), tcp).await.unwrap()
}

#[tokio::test]
async fn stalled_clients_are_cut_off_at_each_phase() {
    let guard =
        Guard::start(&["--handshake-timeout", "300ms", "--idle-timeout", "600ms", "--request-timeout", "300ms"]);

    // Connects and never starts the TLS handshake.
    let mut silent = tokio::net::TcpStream::connect(guard.webhook).await.unwrap();
    assert!(closed_within(&mut silent, Duration::from_secs(3)).await, "handshake timeout");

    // Completes the handshake and never sends a request: idle.
    let mut idle = tls_connect(&guard).await;
    assert!(closed_within(&mut idle, Duration::from_secs(3)).await, "idle timeout");

    // Sends half a header.
    let mut slow_head = tls_connect(&guard).await;
    slow_head.write_all(b"POST /validate HTTP/1.1\r\nHost: localhost\r\n").await.unwrap();
    assert!(closed_within(&mut slow_head, Duration::from_secs(3)).await, "header timeout");

    // Sends the head and half the body: answered 408.
    let mut slow_body = tls_connect(&guard).await;
    let head =
        "POST /validate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{";
    slow_body.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), slow_body.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(read.is_ok() && text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("did not arrive within --request-timeout"), "{text}");

    // Meanwhile a well-behaved client is served.
    let review = Review::namespace("UPDATE", "a")
        .object(namespace_object("a", json!({}), json!(null)))
        .old(namespace_object("a", json!({}), json!(null)));
    let reply = guard.client().review(&guard, "/validate", &review.json()).await;
    assert_eq!(response_of(&reply, &review)["allowed"], true);
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_until_one_closes() {
    let guard = Guard::start(&["--max-connections", "2", "--idle-timeout", "60s"]);
    let first = tls_connect(&guard).await;
    let _second = tls_connect(&guard).await;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_config(&guard.ca_path())));
    let tcp = tokio::net::TcpStream::connect(guard.webhook).await.unwrap();
    let third = connector.connect("localhost".try_into().unwrap(), tcp);
    tokio::pin!(third);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut third).await.is_err(),
        "the third connection is not served while two are open"
    );
    drop(first);
    let third = tokio::time::timeout(Duration::from_secs(5), third).await;
    assert!(third.is_ok_and(|t| t.is_ok()), "served once a slot frees");
}

/// A kubeconfig for an API server that is not there.
const UNREACHABLE_KUBECONFIG: &str = r#"apiVersion: v1
kind: Config
clusters:
- name: gone
  cluster: {server: "https://127.0.0.1:1", insecure-skip-tls-verify: true}
users:
- name: nobody
  user: {token: "not-a-token"}
contexts:
- name: gone
  context: {cluster: gone, user: nobody}
current-context: gone
"#;

#[tokio::test]
async fn label_selected_system_namespaces_keep_it_unready_until_the_cache_syncs_and_say_why() {
    let guard = Guard::start_with_cluster(
        &["--system-namespace-label", "platform.example.com/system=true"],
        "kubeconfig",
        |dir| {
            std::fs::write(dir.join("kubeconfig"), UNREACHABLE_KUBECONFIG).unwrap();
        },
    );
    let client = guard.client();
    assert_eq!(client.get(&guard.url("/healthz")).await.status, 200, "alive");
    let failed = guard.wait_for_log("about the unreachable API server", |l| {
        l["level"] == "WARN" && l["message"].as_str().is_some_and(|m| m.starts_with("namespace watch failed"))
    });
    assert!(failed["error"].as_str().is_some_and(|e| !e.is_empty()), "the error is in the log: {failed}");
    // Without the namespaces' labels it cannot tell which are system namespaces: it must not take traffic.
    assert_eq!(client.get(&guard.url("/readyz")).await.status, 503);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(client.get(&guard.url("/readyz")).await.status, 503, "still unready while the API is unreachable");
}

#[tokio::test]
async fn name_only_configuration_needs_no_cluster_and_is_ready_at_once() {
    // An unreachable API server and no system label: ready anyway, teardown by names until the cache syncs.
    let guard = Guard::start_with_cluster(&[], "kubeconfig", |dir| {
        std::fs::write(dir.join("kubeconfig"), UNREACHABLE_KUBECONFIG).unwrap();
    });
    let client = guard.client();
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.get(&guard.url("/readyz")).await.status != 200 {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let review = Review::network_policy("CREATE", "kube-system", "d").object(network_policy(
        "kube-system",
        "d",
        deny_all_spec(),
    ));
    let reply = client.review(&guard, "/validate", &review.json()).await;
    assert_eq!(response_of(&reply, &review)["allowed"], false);
}

#[test]
fn a_label_selected_configuration_without_any_cluster_is_refused_at_start() {
    let out = std::process::Command::new(BIN)
        .args(["serve", "--addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"])
        .args(["--system-namespace-label", "platform.example.com/system", "--namespace-cache", "off"])
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--system-namespace-label needs the namespace cache"), "{stderr}");
}

/// An HTTP/2 client whose preface and first request travel in the same TCP segment as its TLS Finished: they
/// arrive with the handshake's last flight and sit decrypted inside rustls, where waiting for the socket to turn
/// readable again once hung the connection until the idle timeout (found by examples/loadgen.rs --http2).
#[tokio::test]
async fn http2_request_sent_with_the_tls_finished_is_answered() {
    use std::io::{Read, Write};
    let guard = Guard::start(&[]);
    let mut config = tls_config(&guard.ca_path());
    config.alpn_protocols = vec![b"h2".to_vec()];
    let addr = guard.webhook;
    let answered = tokio::task::spawn_blocking(move || {
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // The handshake, up to the point where only the client's Finished is left to send.
        while tls.is_handshaking() {
            while tls.wants_write() {
                tls.write_tls(&mut tcp).unwrap();
            }
            if tls.is_handshaking() {
                tls.read_tls(&mut tcp).unwrap();
                tls.process_new_packets().unwrap();
            }
        }
        // The preface, an empty SETTINGS frame and `GET /healthz` (HPACK: :method GET, :scheme https, :path and
        // :authority as literals), queued behind the Finished and written with it.
        let mut h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        h2.extend_from_slice(&[0, 0, 0, 0x04, 0, 0, 0, 0, 0]);
        let mut block = vec![0x82, 0x87, 0x04, 8];
        block.extend_from_slice(b"/healthz");
        block.extend_from_slice(&[0x01, 9]);
        block.extend_from_slice(b"localhost");
        h2.extend_from_slice(&[0, 0, block.len() as u8, 0x01, 0x05, 0, 0, 0, 1]);
        h2.extend_from_slice(&block);
        tls.writer().write_all(&h2).unwrap();
        let mut flight = Vec::new();
        while tls.wants_write() {
            tls.write_tls(&mut flight).unwrap();
        }
        tcp.write_all(&flight).unwrap();
        // Read frames until the HEADERS of stream 1 (the answer), or the 5 s read timeout.
        let mut plain = Vec::new();
        loop {
            while plain.len() >= 9 {
                let len = usize::from(plain[0]) << 16 | usize::from(plain[1]) << 8 | usize::from(plain[2]);
                if plain.len() < 9 + len {
                    break;
                }
                let (kind, stream) = (plain[3], u32::from_be_bytes([plain[5], plain[6], plain[7], plain[8]]));
                if kind == 0x01 && stream & 0x7fff_ffff == 1 {
                    return true;
                }
                plain.drain(..9 + len);
            }
            match tls.read_tls(&mut tcp) {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            }
            tls.process_new_packets().unwrap();
            let mut buf = [0u8; 4096];
            while let Ok(n) = tls.reader().read(&mut buf) {
                if n == 0 {
                    break;
                }
                plain.extend_from_slice(&buf[..n]);
            }
        }
    })
    .await
    .unwrap();
    assert!(answered, "no HTTP/2 answer within 5 s to a request sent with the TLS Finished");
}
