//! Certificates: a CA and a serving certificate signed by it (rcgen), for development and for installs without
//! cert-manager. Files are named like the keys of a `kubernetes.io/tls` Secret, so that one layout serves both.
//!
//! `serve` makes a development certificate on first run ([`ensure_dev`]); `default-deny-guard certs` ([`run`])
//! makes one for the webhook's Service and prints the caBundle:
//!
//! ```no_run
//! use default_deny_guard::certs::{CertificateSet, Subject};
//!
//! let subject = Subject::for_service("default-deny-guard", "default-deny-guard", "cluster.local", &[], 365)?;
//! let set = CertificateSet::generate(&subject)?;
//! set.write("certs".as_ref(), false)?;
//! println!("{}", set.ca_bundle());
//! # Ok::<(), default_deny_guard::certs::CertError>(())
//! ```

use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use time::{Duration, OffsetDateTime};

use crate::cli::CertsArgs;

pub const CA_FILE: &str = "ca.crt";
pub const CERT_FILE: &str = "tls.crt";
pub const KEY_FILE: &str = "tls.key";

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot make the certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{0}: not a readable PEM certificate")]
    Unreadable(PathBuf),
    #[error(
        "{}: {} already there; pass --force to replace them (the CA is then new: update the caBundle of the \
         webhook configurations too)",
        .dir.display(),
        .existing.join(", ")
    )]
    Exists { dir: PathBuf, existing: Vec<&'static str> },
    #[error("{}: already there; pass --force to replace it (and the set with it)", .0.display())]
    BundleExists(PathBuf),
    #[error(
        "{what} {value:?} is not a DNS label (1 to 63 lower-case letters, digits and '-', starting and ending with a letter or digit)"
    )]
    NotALabel { what: &'static str, value: String },
}

/// What a serving certificate is for.
#[derive(Debug, Clone)]
pub struct Subject {
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub days: u32,
}

impl Subject {
    /// A webhook behind a Service: every name the API server may use for it (`NAME`, `NAME.NS`, `NAME.NS.svc`,
    /// `NAME.NS.svc.<domain>`), plus `localhost` and 127.0.0.1 for local runs (`serve --tls-cert` on a laptop, as
    /// `certs` suggests, answers `https://localhost:8443`) and `ips`.
    pub fn for_service(
        service: &str,
        namespace: &str,
        cluster_domain: &str,
        ips: &[IpAddr],
        days: u32,
    ) -> Result<Subject, CertError> {
        dns_label("service", service)?;
        dns_label("namespace", namespace)?;
        let domain = cluster_domain.trim_matches('.');
        for label in domain.split('.') {
            dns_label("cluster domain", label)?;
        }
        let dns_names = vec![
            service.to_owned(),
            format!("{service}.{namespace}"),
            format!("{service}.{namespace}.svc"),
            format!("{service}.{namespace}.svc.{domain}"),
            "localhost".to_owned(),
        ];
        let mut all_ips = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
        for ip in ips {
            if !all_ips.contains(ip) {
                all_ips.push(*ip);
            }
        }
        Ok(Subject { dns_names, ips: all_ips, days })
    }
}

/// A name that goes into a DNS name must be an RFC 1123 label, or the certificate matches nothing.
fn dns_label(what: &'static str, value: &str) -> Result<(), CertError> {
    let bytes = value.as_bytes();
    let edge_ok = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let ok = (1..=63).contains(&bytes.len())
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && edge_ok(bytes.first())
        && edge_ok(bytes.last());
    if ok { Ok(()) } else { Err(CertError::NotALabel { what, value: value.to_owned() }) }
}

/// A CA and the serving certificate and key it signed, PEM-encoded. The CA's key is not kept: nothing is signed
/// with it later, and a key that does not exist cannot leak.
#[derive(Debug, Clone)]
pub struct CertificateSet {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl CertificateSet {
    pub fn generate(subject: &Subject) -> Result<CertificateSet, CertError> {
        let now = OffsetDateTime::now_utc();
        // An hour of slack for clocks that are a little behind ours.
        let not_before = now - Duration::hours(1);
        let not_after = now + Duration::days(i64::from(subject.days.max(1)));

        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.distinguished_name.push(DnType::CommonName, "default-deny-guard CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        ca.not_before = not_before;
        ca.not_after = not_after;
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, ca_key);

        let key = KeyPair::generate()?;
        let mut leaf = CertificateParams::new(subject.dns_names.clone())?;
        leaf.subject_alt_names.extend(subject.ips.iter().map(|ip| SanType::IpAddress(*ip)));
        let cn = subject.dns_names.first().cloned().unwrap_or_else(|| "default-deny-guard".into());
        leaf.distinguished_name.push(DnType::CommonName, cn);
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf.use_authority_key_identifier_extension = true;
        leaf.not_before = not_before;
        leaf.not_after = not_after;
        let cert = leaf.signed_by(&key, &issuer)?;

        Ok(CertificateSet { ca_pem: ca_cert.pem(), cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// The CA as a webhook configuration's `clientConfig.caBundle` takes it: standard base64 of the PEM.
    pub fn ca_bundle(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.ca_pem)
    }

    /// Writes `ca.crt`, `tls.crt` and `tls.key` (mode 0600) into `dir`. Without `replace`, fails if any of them
    /// exists, and writes none: a set is only usable whole.
    pub fn write(&self, dir: &Path, replace: bool) -> Result<(), CertError> {
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| CertError::Io { path, source }
        };
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let files =
            [(CA_FILE, &self.ca_pem, false), (CERT_FILE, &self.cert_pem, false), (KEY_FILE, &self.key_pem, true)];
        if !replace {
            let existing: Vec<&'static str> =
                files.iter().map(|(file, ..)| *file).filter(|file| dir.join(file).symlink_metadata().is_ok()).collect();
            if !existing.is_empty() {
                return Err(CertError::Exists { dir: dir.to_owned(), existing });
            }
        }
        for (file, pem, private) in files {
            let path = dir.join(file);
            write_file(&path, pem.as_bytes(), private, replace).map_err(io_err(&path))?;
        }
        Ok(())
    }
}

fn write_file(path: &Path, bytes: &[u8], private: bool, replace: bool) -> io::Result<()> {
    use std::io::Write;
    let mut options = fs::OpenOptions::new();
    options.write(true);
    if replace {
        options.create(true).truncate(true);
    } else {
        // Not `create`: a file that appeared since the check above is not overwritten either.
        options.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    let mut f = options.open(path)?;
    // The mode above applies to a new file only: a replaced key must not keep the old file's looser permissions.
    // Set before the new key is written, so it is never readable by others.
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(bytes)?;
    f.sync_all()
}

/// The first certificate's `notAfter`, in seconds since the Unix epoch.
pub fn not_after(pem: &[u8]) -> Option<i64> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    let cert = pem.parse_x509().ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// The development certificate's files.
#[derive(Debug, Clone)]
pub struct DevCertificate {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    /// Made now, rather than found from an earlier run.
    pub created: bool,
}

/// Finds or makes the development certificate under `dir`: `localhost`, `127.0.0.1` and `::1`, valid for a year.
/// One that exists and is valid for at least another day is reused, so that a client that trusts its CA keeps
/// trusting it across restarts.
pub fn ensure_dev(dir: &Path) -> Result<DevCertificate, CertError> {
    let dev =
        DevCertificate { cert: dir.join(CERT_FILE), key: dir.join(KEY_FILE), ca: dir.join(CA_FILE), created: false };
    let tomorrow = (OffsetDateTime::now_utc() + Duration::days(1)).unix_timestamp();
    let reusable = dev.key.exists()
        && dev.ca.exists()
        && fs::read(&dev.cert).ok().and_then(|pem| not_after(&pem)).is_some_and(|end| end > tomorrow);
    if reusable {
        return Ok(dev);
    }
    let subject = Subject {
        dns_names: vec!["localhost".into()],
        ips: vec![IpAddr::from([127, 0, 0, 1]), IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1])],
        days: 365,
    };
    CertificateSet::generate(&subject)?.write(dir, true)?;
    Ok(DevCertificate { created: true, ..dev })
}

/// `default-deny-guard certs`: writes the set, prints the caBundle on stdout (so that `$(...)` captures it) and
/// what was done on stderr.
pub fn run(args: &CertsArgs) -> ExitCode {
    match issue(args) {
        Ok(report) => {
            if args.ca_bundle_out.is_none() {
                println!("{}", report.ca_bundle);
            }
            eprint!("{}", report.notes);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("default-deny-guard certs: {e}");
            ExitCode::FAILURE
        }
    }
}

struct Issued {
    ca_bundle: String,
    notes: String,
}

fn issue(args: &CertsArgs) -> Result<Issued, CertError> {
    let subject = Subject::for_service(&args.service, &args.namespace, &args.cluster_domain, &args.ip, args.days)?;
    let set = CertificateSet::generate(&subject)?;
    // Checked before the set is written, so that a refusal writes nothing at all.
    if let Some(bundle) = &args.ca_bundle_out
        && !args.force
        && bundle.symlink_metadata().is_ok()
    {
        return Err(CertError::BundleExists(bundle.clone()));
    }
    set.write(&args.out, args.force)?;
    if let Some(bundle) = &args.ca_bundle_out {
        let text = format!("{}\n", set.ca_bundle());
        write_file(bundle, text.as_bytes(), false, args.force)
            .map_err(|source| CertError::Io { path: bundle.clone(), source })?;
    }
    let path = |file: &str| args.out.join(file).display().to_string();
    let names: Vec<String> =
        subject.dns_names.iter().cloned().chain(subject.ips.iter().map(ToString::to_string)).collect();
    let until = not_after(set.cert_pem.as_bytes())
        .and_then(|t| jiff::Timestamp::from_second(t).ok())
        .map_or_else(|| format!("{} days from now", subject.days), |t| t.to_string());
    let (ca, cert, key) = (path(CA_FILE), path(CERT_FILE), path(KEY_FILE));
    let bundle_at = match &args.ca_bundle_out {
        Some(file) => format!("in {}", file.display()),
        None => "on stdout".to_owned(),
    };
    let notes = format!(
        "wrote {ca}, {cert} and {key} (the key readable by its owner only, mode 0600)\n\
         the certificate is for {names} and valid until {until}\n\
         the caBundle (base64 of {ca}) is {bundle_at}, for clientConfig.caBundle of the webhook configurations; the \
         CA's key was not kept, so another run makes another CA\n\
         in the cluster: kubectl -n {ns} create secret tls {service}-tls --cert={cert} --key={key}\n\
         locally: default-deny-guard serve --tls-cert {cert} --tls-key {key} (then https://localhost:8443, \
         trusting {ca})\n",
        names = names.join(", "),
        ns = args.namespace,
        service = args.service,
    );
    Ok(Issued { ca_bundle: set.ca_bundle(), notes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_chain_has_the_sans_and_issuer() {
        let subject = Subject {
            dns_names: vec!["guard.ddg.svc".into(), "guard.ddg.svc.cluster.local".into()],
            ips: vec![IpAddr::from([127, 0, 0, 1])],
            days: 30,
        };
        let set = CertificateSet::generate(&subject).unwrap();
        let (_, ca_pem) = x509_parser::pem::parse_x509_pem(set.ca_pem.as_bytes()).unwrap();
        let ca = ca_pem.parse_x509().unwrap();
        let (_, leaf_pem) = x509_parser::pem::parse_x509_pem(set.cert_pem.as_bytes()).unwrap();
        let leaf = leaf_pem.parse_x509().unwrap();
        assert!(ca.is_ca());
        assert!(!leaf.is_ca());
        assert_eq!(leaf.issuer(), ca.subject());
        let sans = leaf.subject_alternative_name().unwrap().unwrap();
        let names: Vec<String> = sans.value.general_names.iter().map(|n| n.to_string()).collect();
        assert_eq!(names, ["DNSName(guard.ddg.svc)", "DNSName(guard.ddg.svc.cluster.local)", "IPAddress(7f:00:00:01)"]);
        let left = leaf.validity().not_after.timestamp() - OffsetDateTime::now_utc().unix_timestamp();
        assert!((left - 30 * 86_400).abs() < 60, "valid for 30 days, not {left} s");
    }

    #[test]
    fn service_subject_names_every_form_of_the_service() {
        let s = Subject::for_service("guard", "ddg", "cluster.local.", &["10.0.0.7".parse().unwrap()], 30).unwrap();
        assert_eq!(s.dns_names, ["guard", "guard.ddg", "guard.ddg.svc", "guard.ddg.svc.cluster.local", "localhost"]);
        let ips: Vec<String> = s.ips.iter().map(ToString::to_string).collect();
        assert_eq!(ips, ["127.0.0.1", "10.0.0.7"]);
        let localhost_once = Subject::for_service("guard", "ddg", "cluster.local", &[IpAddr::from([127, 0, 0, 1])], 1);
        assert_eq!(localhost_once.unwrap().ips.len(), 1);
        for (service, namespace, domain) in [
            ("Guard", "ddg", "cluster.local"),
            ("guard", "-ddg", "cluster.local"),
            ("guard", "ddg", "a..b"),
            ("", "d", "c"),
        ] {
            let e = Subject::for_service(service, namespace, domain, &[], 1).unwrap_err();
            assert!(matches!(e, CertError::NotALabel { .. }), "{e}");
        }
    }

    #[test]
    fn write_refuses_to_replace_unless_told_and_keeps_the_key_private() {
        let dir = std::env::temp_dir().join(format!("ddg-certs-write-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let subject = Subject::for_service("guard", "ddg", "cluster.local", &[], 1).unwrap();
        let first = CertificateSet::generate(&subject).unwrap();
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(KEY_FILE), "old").unwrap();
        let e = first.write(&dir, false).unwrap_err();
        assert!(e.to_string().contains("tls.key already there; pass --force"), "{e}");
        assert!(!dir.join(CA_FILE).exists(), "nothing written when refusing");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(dir.join(KEY_FILE), fs::Permissions::from_mode(0o644)).unwrap();
        }
        first.write(&dir, true).unwrap();
        assert_eq!(fs::read_to_string(dir.join(KEY_FILE)).unwrap(), first.key_pem);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(dir.join(KEY_FILE)).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let decoded = base64::engine::general_purpose::STANDARD.decode(first.ca_bundle()).unwrap();
        assert_eq!(decoded, first.ca_pem.as_bytes());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dev_certificate_is_made_once_then_reused() {
        let dir = std::env::temp_dir().join(format!("ddg-dev-certs-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let first = ensure_dev(&dir).unwrap();
        assert!(first.created);
        let pem = fs::read(&first.cert).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&first.key).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let second = ensure_dev(&dir).unwrap();
        assert!(!second.created);
        assert_eq!(fs::read(&second.cert).unwrap(), pem);
        fs::remove_dir_all(&dir).unwrap();
    }
}
