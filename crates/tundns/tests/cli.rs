//! The command line as a wg-quick user meets it, with no tunnel and no root: what `tundns
//! check` says about a config file.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

const CONFIG: &str = "[Interface]\n\
    PrivateKey = yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\n\
    Address = 10.99.0.2/24\n\
    [Peer]\n\
    PublicKey = xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=\n\
    AllowedIPs = 10.99.0.0/24\n\
    Endpoint = 192.0.2.1:51820\n";

/// `CONFIG` in a fresh directory of its own, as `wg0.conf` with `mode`.
fn config_with_mode(test: &str, mode: u32) -> PathBuf {
    let directory = std::env::temp_dir().join(format!("tundns-cli-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&directory);
    std::fs::create_dir_all(&directory).unwrap();
    let path = directory.join("wg0.conf");
    std::fs::write(&path, CONFIG).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

fn check(path: &PathBuf) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tundns"))
        .arg("check")
        .arg(path)
        .output()
        .expect("run tundns check");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_world_accessible_config_is_warned_about_as_wg_quick_does() {
    let open = config_with_mode("open", 0o644);
    let (ok, stderr) = check(&open);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains(&format!("warning: {} is world accessible", open.display())),
        "{stderr}"
    );
    let closed = config_with_mode("closed", 0o600);
    let (ok, stderr) = check(&closed);
    assert!(ok, "{stderr}");
    assert!(!stderr.contains("world accessible"), "{stderr}");
    for path in [open, closed] {
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}

#[test]
fn a_name_that_is_no_interface_is_refused_before_any_file_is_read() {
    for name in ["w$(id>x)", "-wg0"] {
        let output = Command::new(env!("CARGO_BIN_EXE_tundns"))
            .args(["check", "--", name])
            .output()
            .expect("run tundns check");
        assert_eq!(output.status.code(), Some(2), "{name}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("neither a config path nor an interface name"),
            "{stderr}"
        );
    }
}
