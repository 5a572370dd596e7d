//! Certificates: a CA and a serving certificate signed by it (rcgen), for development and for installs without
//! cert-manager. Files are named like the keys of a `kubernetes.io/tls` Secret, so that one layout serves both.

use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use time::{Duration, OffsetDateTime};

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
}

/// What a serving certificate is for.
#[derive(Debug, Clone)]
pub struct Subject {
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub days: u32,
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

    /// Writes `ca.crt`, `tls.crt` and `tls.key` (mode 0600) into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), CertError> {
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| CertError::Io { path, source }
        };
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        for (file, pem, private) in
            [(CA_FILE, &self.ca_pem, false), (CERT_FILE, &self.cert_pem, false), (KEY_FILE, &self.key_pem, true)]
        {
            let path = dir.join(file);
            write_file(&path, pem.as_bytes(), private).map_err(io_err(&path))?;
        }
        Ok(())
    }
}

fn write_file(path: &Path, bytes: &[u8], private: bool) -> io::Result<()> {
    use std::io::Write;
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    let mut f = options.open(path)?;
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
    CertificateSet::generate(&subject)?.write(dir)?;
    Ok(DevCertificate { created: true, ..dev })
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
