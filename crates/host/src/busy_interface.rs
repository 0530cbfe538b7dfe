//! Who holds an interface name that `tundns up` cannot have: so that the error names the
//! process (or the kind of interface) to deal with, not only "device or resource busy".

use std::path::Path;

/// What is already there under `name`, in words; `None` when there is no such interface.
pub fn describe(name: &str) -> Option<String> {
    let link = Path::new("/sys/class/net").join(name);
    if !link.exists() {
        return None;
    }
    if link.join("tun_flags").exists() {
        let holders = tun_holders(name);
        return Some(if holders.is_empty() {
            format!(
                "a TUN/TAP interface {name} exists, of another kind or owner (`ip link del {name}` removes it)"
            )
        } else {
            format!("the TUN {name} is held by {}", holders.join(", "))
        });
    }
    let uevent = std::fs::read_to_string(link.join("uevent")).unwrap_or_default();
    let kind = uevent
        .lines()
        .find_map(|line| line.strip_prefix("DEVTYPE="))
        .unwrap_or("network");
    Some(match kind {
        "wireguard" => format!(
            "a kernel WireGuard interface {name} exists (wg-quick's? `wg-quick down {name}` or \
             `ip link del {name}` removes it)"
        ),
        kind => format!("a {kind} interface {name} exists (`ip link del {name}` removes it)"),
    })
}

/// The processes in this network namespace with a file descriptor attached to the TUN
/// `name`, as `comm (pid N)`: the kernel shows the attached interface as `iff:` in each TUN
/// descriptor's fdinfo. (A TUN belongs to the namespace its holder opened it in.)
fn tun_holders(name: &str) -> Vec<String> {
    use std::os::unix::fs::MetadataExt as _;
    let wanted = format!("iff:\t{name}\n");
    let namespace_of = |path: &Path| std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
    let ours = namespace_of(Path::new("/proc/self/ns/net"));
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut holders = Vec::new();
    for process in processes.filter_map(Result::ok) {
        let Some(pid) = process
            .file_name()
            .to_str()
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if namespace_of(&process.path().join("ns/net")) != ours {
            continue;
        }
        let Ok(descriptors) = std::fs::read_dir(process.path().join("fdinfo")) else {
            continue;
        };
        let holds = descriptors.filter_map(Result::ok).any(|descriptor| {
            std::fs::read_to_string(descriptor.path()).is_ok_and(|info| info.contains(&wanted))
        });
        if holds {
            let comm = std::fs::read_to_string(process.path().join("comm")).unwrap_or_default();
            holders.push(format!("{} (pid {pid})", comm.trim()));
        }
    }
    holders
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_interface_nothing_to_say() {
        assert_eq!(describe("tundns-none0"), None);
    }

    #[test]
    fn loopback_is_named_by_its_kind() {
        let said = describe("lo").expect("lo exists");
        assert!(said.contains("interface lo exists"), "{said}");
    }
}
