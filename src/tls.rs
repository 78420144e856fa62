//! TLS material for the docker API, made per run with the openssl command, in the
//! layout of the official docker:dind image: `ca/`, `server/` and `client/`, each
//! with `ca.pem`, and the last two with `cert.pem` and `key.pem`. The CA's key is
//! deleted once both certificates are signed, so nobody can mint another.

use crate::error::{fail, Context, Error};
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// Names the server certificate answers to: the forwarded loopback port, and the guest.
const SERVER_NAMES: &str = "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1,DNS:diqid,IP:10.0.2.15";

pub fn generate(dir: &Path) -> Result<(), Error> {
    for sub in ["", "ca", "server", "client"] {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir.join(sub)).ctx(|| format!("cannot create {}", dir.join(sub).display()))?;
    }
    let p = |rel: &str| dir.join(rel).to_string_lossy().to_string();
    let newkey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    openssl(&[&["req", "-x509"][..], &newkey, &["-keyout", &p("ca/key.pem"), "-out", &p("ca/ca.pem"), "-days", "3650", "-subj", "/CN=diqid CA"]].concat())?;
    for (who, usage, names) in [("server", "serverAuth", SERVER_NAMES), ("client", "clientAuth", "")] {
        let ext = dir.join(format!("{who}/ext.cnf"));
        fs::write(&ext, format!("extendedKeyUsage={usage}\n{names}\n")).ctx(|| format!("cannot write {}", ext.display()))?;
        let csr = p(&format!("{who}/req.csr"));
        openssl(&[&["req"][..], &newkey, &["-keyout", &p(&format!("{who}/key.pem")), "-out", &csr, "-subj", &format!("/CN=diqid {who}")]].concat())?;
        openssl(&[
            "x509", "-req", "-in", &csr, "-CA", &p("ca/ca.pem"), "-CAkey", &p("ca/key.pem"), "-set_serial",
            &format!("0x{:x}", std::process::id() as u64 * 2 + (who == "client") as u64),
            "-days", "3650", "-extfile", &ext.to_string_lossy(), "-out", &p(&format!("{who}/cert.pem")),
        ])?;
        fs::copy(dir.join("ca/ca.pem"), dir.join(format!("{who}/ca.pem"))).ctx(|| "cannot copy the CA certificate".into())?;
        let _ = fs::remove_file(&csr);
        let _ = fs::remove_file(&ext);
    }
    fs::remove_file(dir.join("ca/key.pem")).ctx(|| "cannot delete the CA key".into())
}

fn openssl(args: &[&str]) -> Result<(), Error> {
    let out = Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Usage(format!("cannot run openssl ({e}); install it (apt-get install openssl)")))?;
    if !out.status.success() {
        return fail(format!("openssl {} failed: {}", args[0], String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn makes_a_verifiable_pair_and_forgets_the_ca_key() {
        if Command::new("openssl").arg("version").output().is_err() {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("tls");
        generate(&d).unwrap();
        assert!(!d.join("ca/key.pem").exists());
        for who in ["server", "client"] {
            for f in ["ca.pem", "cert.pem", "key.pem"] {
                assert!(d.join(who).join(f).is_file(), "{who}/{f}");
            }
            let v = Command::new("openssl")
                .args(["verify", "-purpose", if who == "server" { "sslserver" } else { "sslclient" }, "-CAfile"])
                .arg(d.join("ca/ca.pem"))
                .arg(d.join(who).join("cert.pem"))
                .output()
                .unwrap();
            assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
            let mode = fs::metadata(d.join(who)).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{who} is private");
        }
    }
}
