//! `default-deny-guard certs`, the real binary: the certificate read back (names, validity, chain to the printed
//! CA), the files' protection, and `serve` presenting it to clients that trust nothing but the printed caBundle.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use base64::Engine as _;
use common::*;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn certs(args: &[&str]) -> Run {
    let out = Command::new(BIN).arg("certs").args(args).output().expect("run default-deny-guard certs");
    Run {
        code: out.status.code().expect("exited, not killed"),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// `certs --service guard --namespace ddg` into `dir`, plus `extra`; returns the printed caBundle.
fn issue(dir: &Path, extra: &[&str]) -> String {
    let mut args = vec!["--out", dir.to_str().unwrap(), "--service", "guard", "--namespace", "ddg"];
    args.extend(extra);
    let run = certs(&args);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout.lines().count(), 1, "stdout is the caBundle alone, for $(...): {}", run.stdout);
    run.stdout.trim().to_owned()
}

fn decode(bundle: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(bundle).expect("standard base64")
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

const NAMES: [&str; 5] = ["guard", "guard.ddg", "guard.ddg.svc", "guard.ddg.svc.cluster.local", "localhost"];

#[test]
fn certs_makes_a_ca_and_a_serving_certificate_for_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let bundle = issue(&out, &["--ip", "10.96.0.20", "--days", "30"]);
    let ca_pem = std::fs::read(out.join("ca.crt")).unwrap();
    assert_eq!(decode(&bundle), ca_pem, "the caBundle is base64 of ca.crt");

    let cert_pem = std::fs::read(out.join("tls.crt")).unwrap();
    let (_, ca) = x509_parser::pem::parse_x509_pem(&ca_pem).unwrap();
    let ca = ca.parse_x509().unwrap();
    let (_, leaf) = x509_parser::pem::parse_x509_pem(&cert_pem).unwrap();
    let leaf = leaf.parse_x509().unwrap();
    assert!(ca.is_ca() && !leaf.is_ca());
    assert_eq!(leaf.issuer(), ca.subject());
    assert!(leaf.extended_key_usage().unwrap().unwrap().value.server_auth);

    let sans = leaf.subject_alternative_name().unwrap().unwrap();
    let sans: Vec<String> = sans.value.general_names.iter().map(ToString::to_string).collect();
    let mut want: Vec<String> = NAMES.iter().map(|n| format!("DNSName({n})")).collect();
    want.extend(["IPAddress(7f:00:00:01)".into(), "IPAddress(0a:60:00:14)".into()]);
    assert_eq!(sans, want, "the Service's names, localhost, 127.0.0.1 and --ip");

    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    for cert in [&ca, &leaf] {
        let validity = cert.validity();
        assert!(validity.not_before.timestamp() <= now, "valid already");
        let left = validity.not_after.timestamp() - now;
        assert!((left - 30 * 86_400).abs() < 120, "--days 30, not {left} s");
    }

    // The chain, verified as a TLS client that trusts only the caBundle does it: every name in, others out.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(&decode(&bundle)).unwrap()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
    let leaf_der = CertificateDer::from_pem_slice(&cert_pem).unwrap();
    for name in NAMES.into_iter().chain(["127.0.0.1", "10.96.0.20"]) {
        let server = ServerName::try_from(name).unwrap();
        verifier
            .verify_server_cert(&leaf_der, &[], &server, &[], UnixTime::now())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    for name in ["guard.other.svc", "guard.ddg.svc.example.org", "localhost.localdomain"] {
        let server = ServerName::try_from(name).unwrap();
        assert!(verifier.verify_server_cert(&leaf_der, &[], &server, &[], UnixTime::now()).is_err(), "{name}");
    }

    assert_eq!(mode(&out.join("tls.key")), 0o600);
    assert_eq!(mode(&out.join("tls.crt")), 0o644);
}

#[test]
fn certs_refuses_to_replace_a_set_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let first = issue(dir.path(), &[]);
    let key = std::fs::read(dir.path().join("tls.key")).unwrap();

    let again = certs(&["--out", dir.path().to_str().unwrap(), "--service", "guard", "--namespace", "ddg"]);
    assert_ne!(again.code, 0);
    assert!(again.stdout.is_empty(), "no caBundle for a set not made");
    assert!(again.stderr.contains("ca.crt, tls.crt, tls.key already there; pass --force"), "{}", again.stderr);
    assert_eq!(std::fs::read(dir.path().join("tls.key")).unwrap(), key, "untouched");

    let forced = issue(dir.path(), &["--force"]);
    assert_ne!(forced, first, "a new CA");
    assert_ne!(std::fs::read(dir.path().join("tls.key")).unwrap(), key);
    assert_eq!(mode(&dir.path().join("tls.key")), 0o600);

    let bad = certs(&["--out", dir.path().to_str().unwrap(), "--service", "Guard_1", "--namespace", "ddg", "--force"]);
    assert_ne!(bad.code, 0);
    assert!(bad.stderr.contains("service \"Guard_1\" is not a DNS label"), "{}", bad.stderr);
}

/// `--ca-bundle-out`: the bundle goes to its own file, and a refused rerun (where `> cabundle.b64` would already
/// have emptied it) leaves that file and the set as they were.
#[test]
fn ca_bundle_out_writes_the_bundle_and_a_refused_rerun_empties_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (out, bundle) = (dir.path().join("prod"), dir.path().join("cabundle.b64"));
    let args =
        ["--out", path_str(&out), "--service", "guard", "--namespace", "ddg", "--ca-bundle-out", path_str(&bundle)];
    let run = certs(&args);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, "", "the bundle goes to the file, not stdout");
    assert!(run.stderr.contains(&format!("is in {}", bundle.display())), "{}", run.stderr);
    let written = std::fs::read_to_string(&bundle).unwrap();
    assert_eq!(decode(written.trim_end()), std::fs::read(out.join("ca.crt")).unwrap(), "base64 of ca.crt");
    assert_eq!(mode(&bundle), 0o644);

    // Rerun without --force: refused because of the set, and nothing is emptied or replaced.
    let key = std::fs::read(out.join("tls.key")).unwrap();
    let again = certs(&args);
    assert_ne!(again.code, 0);
    assert!(again.stderr.contains("already there; pass --force"), "{}", again.stderr);
    assert_eq!(std::fs::read_to_string(&bundle).unwrap(), written);
    assert_eq!(std::fs::read(out.join("tls.key")).unwrap(), key);

    // The bundle file alone is enough to refuse, before any of the set is written.
    let fresh = dir.path().join("fresh");
    let refused = certs(&[
        "--out",
        path_str(&fresh),
        "--service",
        "guard",
        "--namespace",
        "ddg",
        "--ca-bundle-out",
        path_str(&bundle),
    ]);
    assert_ne!(refused.code, 0);
    assert!(refused.stderr.contains("cabundle.b64: already there; pass --force"), "{}", refused.stderr);
    assert!(!fresh.exists(), "nothing written");
    assert_eq!(std::fs::read_to_string(&bundle).unwrap(), written);

    // --force replaces both, in step.
    let mut forced = args.to_vec();
    forced.push("--force");
    assert_eq!(certs(&forced).code, 0);
    let replaced = std::fs::read_to_string(&bundle).unwrap();
    assert_ne!(replaced, written);
    assert_eq!(decode(replaced.trim_end()), std::fs::read(out.join("ca.crt")).unwrap());
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test]
async fn serve_presents_the_certificate_and_clients_verify_it_with_the_printed_ca_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = issue(dir.path(), &[]);
    let trusted: PathBuf = dir.path().join("bundle.pem");
    std::fs::write(&trusted, decode(&bundle)).unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));

    let guard = Guard::start(&["--tls-cert", path_str(&cert), "--tls-key", path_str(&key)]);
    assert!(!guard.dir.path().join("certs").exists(), "no development certificate made");
    let port = guard.webhook.port();

    // Through the IP SAN, with the suite's HTTPS client, over both protocols.
    for client in [Https::new(&trusted, Protocol::Http1), Https::new(&trusted, Protocol::Http2)] {
        assert_eq!(client.get(&format!("https://127.0.0.1:{port}/healthz")).await.status, 200);
    }
    let client = Https::new(&trusted, Protocol::Http1);
    let review = Review::network_policy("CREATE", "kube-system", "default-deny-all").object(network_policy(
        "kube-system",
        "default-deny-all",
        deny_all_spec(),
    ));
    let url = format!("https://127.0.0.1:{port}/validate?timeout=10s");
    let reply =
        client.request("POST", &url, Some("application/json"), serde_json::to_vec(&review.json()).unwrap()).await;
    assert_eq!(response_of(&reply, &review)["allowed"], false);

    // Under the name the API server uses for the Service (`guard.ddg.svc`), connecting to this address.
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_config(&trusted)));
    let tcp = tokio::net::TcpStream::connect(guard.webhook).await.unwrap();
    let mut tls = connector.connect(ServerName::try_from("guard.ddg.svc").unwrap(), tcp).await.unwrap();
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: guard.ddg.svc\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    tls.read_to_end(&mut answer).await.unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));

    // And as `https://localhost:PORT`, the local run that certs' own notes suggest.
    let reply = Https::new(&trusted, Protocol::Http1).get(&format!("https://localhost:{port}/healthz")).await;
    assert_eq!(reply.status, 200);

    // A name the certificate does not carry fails verification: the client really checks.
    let tcp = tokio::net::TcpStream::connect(guard.webhook).await.unwrap();
    assert!(connector.connect(ServerName::try_from("guard.other.svc").unwrap(), tcp).await.is_err());
}
