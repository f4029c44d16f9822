//! The Debian package: built with cargo-deb, inspected with dpkg-deb.

use std::process::Command;

fn dpkg_deb(args: &[&str], deb: &std::path::Path) -> String {
    let output = Command::new("dpkg-deb")
        .args(args)
        .arg(deb)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn deb_holds_the_binary_unit_conffile_and_creates_the_user() {
    let out = tempfile::tempdir().unwrap();
    let deb = out.path().join("turn-agent.deb");
    let build = Command::new(env!("CARGO"))
        .args(["deb", "--locked", "--output"])
        .arg(&deb)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo-deb must be installed (scripts/test.sh installs it)");
    assert!(
        build.status.success(),
        "{}",
        String::from_utf8_lossy(&build.stderr)
    );

    let contents = dpkg_deb(&["--contents"], &deb);
    for path in [
        "./usr/bin/turn-agent",
        "./etc/turn-agent/turn-agent.toml",
        "/systemd/system/turn-agent.service",
        "./usr/share/doc/turn-agent/examples/allocator.toml",
    ] {
        assert!(contents.contains(path), "{path} missing from:\n{contents}");
    }
    let info = dpkg_deb(&["--info"], &deb);
    assert!(info.contains("Package: turn-agent"), "{info}");
    assert!(
        info.lines()
            .any(|line| line.contains("Depends:") && line.contains("coturn")),
        "{info}"
    );

    let control = out.path().join("control");
    let status = Command::new("dpkg-deb")
        .arg("--control")
        .arg(&deb)
        .arg(&control)
        .status()
        .unwrap();
    assert!(status.success());
    let conffiles = std::fs::read_to_string(control.join("conffiles")).unwrap();
    assert!(
        conffiles.contains("/etc/turn-agent/turn-agent.toml"),
        "{conffiles}"
    );
    let postinst = std::fs::read_to_string(control.join("postinst")).unwrap();
    assert!(postinst.contains("adduser --system --group"), "{postinst}");
    assert!(postinst.contains("/var/lib/turn-agent"), "{postinst}");
}
