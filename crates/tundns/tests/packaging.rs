//! The systemd packaging (`packaging/`): the template unit passes `systemd-analyze verify`,
//! and its ExecStart wrapper picks /etc/tundns before /etc/wireguard and fails as a config
//! error when neither has the file. No tundns runs: a stand-in prints what it was given.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const PACKAGING: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../packaging");

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tundns-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the wrapper for `iface` with `dirs` as the config search path; the stand-in for
/// tundns echoes its arguments.
fn tundns_up(iface: &str, dirs: &[&Path]) -> Output {
    let dirs: Vec<String> = dirs.iter().map(|dir| dir.display().to_string()).collect();
    Command::new("sh")
        .arg(Path::new(PACKAGING).join("tundns-up"))
        .arg(iface)
        .env("TUNDNS", "echo")
        .env("TUNDNS_CONFIG_DIRS", dirs.join(" "))
        .output()
        .expect("run sh")
}

#[test]
fn the_wrapper_prefers_etc_tundns_then_etc_wireguard() {
    let root = TempDir::new("packaging-wrapper");
    let (tundns_dir, wireguard_dir) = (root.0.join("tundns"), root.0.join("wireguard"));
    for dir in [&tundns_dir, &wireguard_dir] {
        std::fs::create_dir_all(dir).unwrap();
    }
    let dirs = [tundns_dir.as_path(), wireguard_dir.as_path()];
    std::fs::write(wireguard_dir.join("wg0.conf"), "").unwrap();
    let run = tundns_up("wg0", &dirs);
    assert!(run.status.success(), "{run:?}");
    assert_eq!(
        String::from_utf8_lossy(&run.stdout),
        format!("up {}\n", wireguard_dir.join("wg0.conf").display())
    );

    std::fs::write(tundns_dir.join("wg0.conf"), "").unwrap();
    let run = tundns_up("wg0", &dirs);
    assert_eq!(
        String::from_utf8_lossy(&run.stdout),
        format!("up {}\n", tundns_dir.join("wg0.conf").display())
    );

    let missing = tundns_up("wg1", &dirs);
    assert_eq!(missing.status.code(), Some(2), "{missing:?}");
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("no config for wg1") && stderr.contains("wireguard/wg1.conf"),
        "{stderr}"
    );
    for bad in ["", "../wg0", ".hidden"] {
        assert_eq!(tundns_up(bad, &dirs).status.code(), Some(2), "{bad:?}");
    }
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let available = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    if !available {
        assert!(
            std::env::var("TUNDNS_E2E").as_deref() != Ok("1"),
            "TUNDNS_E2E=1 but systemd-analyze is not installed (scripts/install-deps.sh installs it)"
        );
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    }
    let unit = std::fs::read_to_string(Path::new(PACKAGING).join("tundns@.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/lib/tundns/tundns-up %i"));
    assert!(unit.contains("ExecStopPost=/usr/lib/tundns/tundns-up --reset %i"));
    assert!(unit.contains("CapabilityBoundingSet=CAP_NET_ADMIN\n"));
    // verify checks that ExecStart exists: point it at the wrapper in this checkout.
    let wrapper = Path::new(PACKAGING).join("tundns-up");
    let unit = unit.replace("/usr/lib/tundns/tundns-up", &wrapper.display().to_string());
    let dir = TempDir::new("packaging-unit");
    let instance = dir.0.join("tundns@wg0.service");
    std::fs::write(&instance, unit).unwrap();
    let run = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&instance)
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(
        !stderr.contains("tundns@"),
        "no warning about the unit: {stderr}"
    );
}
