//! Test certificates, made with the `openssl` command: a throw-away CA and a server
//! certificate for `127.0.0.1` / `localhost` signed by it, as PEM files (for rustls and
//! librdkafka) and a PKCS#12 keystore (for the Kafka broker's JVM).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Password of the PKCS#12 keystore.
pub const KEYSTORE_PASSWORD: &str = "synclag-test";

/// Files of one generated CA + server certificate.
pub struct TestCerts {
    pub dir: PathBuf,
    /// The CA certificate (PEM): what clients trust.
    pub ca_cert: PathBuf,
    /// The server certificate chain (PEM).
    pub server_cert: PathBuf,
    /// The server's private key (PEM, PKCS#8).
    pub server_key: PathBuf,
    /// Server key and certificate as PKCS#12, password [`KEYSTORE_PASSWORD`].
    pub server_p12: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run `openssl` ({e}); install the openssl package (.ci/run does)")
        });
    assert!(
        out.status.success(),
        "openssl {} failed:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Generates a CA and a server certificate valid for `127.0.0.1` and `localhost` in `dir`.
pub fn generate(dir: &Path) -> TestCerts {
    std::fs::create_dir_all(dir).expect("create certificate dir");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=synclag test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write san.ext");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.crt",
        ],
    );
    openssl(
        dir,
        &[
            "pkcs12",
            "-export",
            "-in",
            "server.crt",
            "-inkey",
            "server.key",
            "-name",
            "server",
            "-passout",
            &format!("pass:{KEYSTORE_PASSWORD}"),
            "-out",
            "server.p12",
        ],
    );
    TestCerts {
        dir: dir.to_path_buf(),
        ca_cert: dir.join("ca.crt"),
        server_cert: dir.join("server.crt"),
        server_key: dir.join("server.key"),
        server_p12: dir.join("server.p12"),
    }
}
