//! The binary as users meet it: dispatch, help, and bad input refused with exit 2
//! before anything is created. No VM is booted here (bats/ does that).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_diqid");

/// Runs `diqid APPLET ARGS` with a clean configuration and a private runtime directory.
fn run(applet: &str, args: &[&str], env: &[(&str, &str)], rundir: &Path) -> Output {
    let mut c = Command::new(BIN);
    c.arg(applet).args(args);
    for var in ["DIQID_PORTS", "MEMORY", "CPUS", "DOCKER_VOLUME_SIZE", "DOCKER_VOLUME_FILE", "DOCKER_VOLUME_REMOVE", "DIQID_ACCEL", "DIQID_KERNEL", "DOCKER_HOST"] {
        c.env_remove(var);
    }
    c.env("DIQID_RUNDIR", rundir).envs(env.iter().copied());
    c.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// Refused as bad usage: exit 2, the reason on stderr, and no runtime directory made.
fn refused(out: &Output, says: &str, rundir: &Path) {
    assert_eq!(out.status.code(), Some(2), "{}", stderr(out));
    assert!(stderr(out).contains(says), "{}", stderr(out));
    assert!(!rundir.exists());
}

fn rundir(t: &tempfile::TempDir) -> PathBuf {
    t.path().join("run")
}

#[test]
fn lists_and_installs_applets() {
    let out = Command::new(BIN).arg("--list").output().unwrap();
    let list = String::from_utf8(out.stdout).unwrap();
    for a in ["diqid-start", "diqid-wait", "diqid-volume", "diqid-init", "docker"] {
        assert!(list.lines().any(|l| l == a), "{a} in {list}");
    }
    let t = tempfile::tempdir().unwrap();
    assert!(Command::new(BIN).arg("--install").arg(t.path()).status().unwrap().success());
    let link = t.path().join("diqid-wait");
    assert_eq!(std::fs::canonicalize(&link).unwrap(), std::fs::canonicalize(BIN).unwrap());
    // Called by that name, it is that applet.
    let out = Command::new(&link).arg("--help").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("Usage: diqid-wait"));
}

#[test]
fn every_applet_has_help() {
    let t = tempfile::tempdir().unwrap();
    for a in ["diqid-start", "diqid-wait", "diqid-volume", "diqid-init"] {
        let out = run(a, &["--help"], &[], &rundir(&t));
        assert_eq!(out.status.code(), Some(0), "{a}");
        assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("Usage: {a}")), "{a}");
    }
}

#[test]
fn unknown_applets_and_flags_are_usage_errors() {
    let t = tempfile::tempdir().unwrap();
    let out = Command::new(BIN).arg("nosuch").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("unknown applet 'nosuch'"));
    let out = run("diqid-start", &["--bogus"], &[], &rundir(&t));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--bogus"));
    let out = run("diqid-volume", &["frobnicate"], &[], &rundir(&t));
    assert_eq!(out.status.code(), Some(2));
    assert!(!rundir(&t).exists());
}

#[test]
fn init_refuses_to_run_outside_the_vm() {
    let t = tempfile::tempdir().unwrap();
    let out = run("diqid-init", &[], &[], &rundir(&t));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("PID 1"));
}

#[test]
fn bad_configuration_is_refused_before_anything_starts() {
    let t = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str, &str)] = &[
        ("MEMORY", "lots", "not a size"),
        ("MEMORY", "0", "between"),
        ("MEMORY", "-1G", "not a size"),
        ("MEMORY", "64T", "between"),
        ("MEMORY", "1000000001", "MiB"),
        ("CPUS", "0", "between"),
        ("CPUS", "two", "whole number"),
        ("CPUS", "100000", "between"),
        ("DOCKER_VOLUME_SIZE", "1X", "not a size"),
        ("DOCKER_VOLUME_SIZE", "1M", "between"),
        ("QEMU_TIMEOUT_START", "-5", "whole number"),
        ("DOCKER_TIMEOUT_START", "0", "between"),
        ("QEMU_TIMEOUT_STOP", "forever", "whole number"),
        ("DOCKER_VOLUME_REMOVE", "perhaps", "true or false"),
        ("DIQID_ACCEL", "fast", "auto, kvm or tcg"),
        ("DIQID_KERNEL", "/nonexistent/vmlinuz-1.0", "is not a file"),
        ("DIQID_PORTS", "80/sctp", "tcp or udp"),
        ("DIQID_PORTS", "0", "1 to 65535"),
        ("DIQID_PORTS", "8080:80:1", "too many parts"),
    ];
    for (var, value, why) in cases {
        let out = run("diqid-start", &["true"], &[(var, value)], &rundir(&t));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{var}={value}: {err}");
        assert!(err.starts_with("diqid-start: "), "{err}");
        assert!(err.contains(var) && err.contains(why) && err.contains("for example") || *var == "DIQID_KERNEL", "{var}={value}: {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(!rundir(&t).exists(), "{var}={value} created the runtime directory");
    }
}

#[test]
fn flags_are_checked_like_variables() {
    let t = tempfile::tempdir().unwrap();
    let out = run("diqid-start", &["--memory", "lots", "true"], &[("MEMORY", "1G")], &rundir(&t));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("MEMORY=\"lots\""));
}

#[test]
fn a_volume_that_is_not_qcow2_is_never_touched() {
    let t = tempfile::tempdir().unwrap();
    let file = t.path().join("data.img");
    std::fs::write(&file, "precious").unwrap();
    let out = run("diqid-start", &["true"], &[("DOCKER_VOLUME_FILE", file.to_str().unwrap())], &rundir(&t));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("not a qcow2 image"));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious");
    assert!(!rundir(&t).exists());
    for sub in ["create", "remove", "info"] {
        let out = run("diqid-volume", &[sub], &[("DOCKER_VOLUME_FILE", file.to_str().unwrap())], &rundir(&t));
        assert_eq!(out.status.code(), Some(2), "{sub}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious");
    }
}

#[test]
fn a_volume_in_a_missing_directory_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let out = run("diqid-start", &["true"], &[("DOCKER_VOLUME_FILE", "/nonexistent/dir/v.qcow2")], &rundir(&t));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("/nonexistent/dir does not exist"));
}

#[test]
fn a_kernel_without_its_modules_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let kernel = t.path().join("vmlinuz-0.0.0-nomodules");
    std::fs::write(&kernel, "not really a kernel").unwrap();
    let out = run("diqid-start", &["true"], &[("DIQID_KERNEL", kernel.to_str().unwrap())], &rundir(&t));
    refused(&out, "the modules of kernel 0.0.0-nomodules are missing", &rundir(&t));
}

#[test]
fn an_unwritable_runtime_directory_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let file = t.path().join("file");
    std::fs::write(&file, "").unwrap();
    let out = run("diqid-start", &["true"], &[], &file.join("run"));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot create the runtime directory"), "{}", stderr(&out));
    assert!(stderr(&out).contains("set DIQID_RUNDIR to a writable place"));
}

#[test]
fn missing_qemu_img_is_named() {
    let t = tempfile::tempdir().unwrap();
    let Some(qemu) = ["/usr/bin/qemu-system-x86_64", "/usr/local/bin/qemu-system-x86_64"].iter().find(|p| Path::new(p).exists()) else { return };
    let bin = t.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(qemu, bin.join("qemu-system-x86_64")).unwrap();
    let out = run("diqid-start", &["true"], &[("PATH", bin.to_str().unwrap())], &rundir(&t));
    refused(&out, "qemu-img not found", &rundir(&t));
}

#[test]
fn a_static_port_in_use_is_refused_before_anything_starts() {
    let t = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let spec = format!("127.0.0.1:{port}");
    let out = run("diqid-start", &["true"], &[("DIQID_PORTS", spec.as_str())], &rundir(&t));
    refused(&out, &format!("DIQID_PORTS: the outer port 127.0.0.1:{port}/tcp is in use"), &rundir(&t));
}

#[test]
fn missing_qemu_is_named() {
    let t = tempfile::tempdir().unwrap();
    let empty = t.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = run("diqid-start", &["true"], &[("PATH", empty.to_str().unwrap())], &rundir(&t));
    if stderr(&out).contains("kernel") {
        return; // no guest kernel on this machine: refused earlier, also with 2
    }
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("qemu-system-x86_64 not found"), "{}", stderr(&out));
}

#[test]
fn volume_applet_creates_shows_and_removes() {
    if Command::new("qemu-img").arg("--version").output().is_err() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let file = t.path().join("v.qcow2");
    let env = [("DOCKER_VOLUME_FILE", file.to_str().unwrap()), ("DOCKER_VOLUME_SIZE", "2G")];
    let out = run("diqid-volume", &["path"], &env, &rundir(&t));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), file.to_str().unwrap());
    assert!(run("diqid-volume", &["create"], &env, &rundir(&t)).status.success());
    let info = run("diqid-volume", &["info"], &env, &rundir(&t));
    assert!(String::from_utf8_lossy(&info.stdout).contains("virtual size: 2 GiB"), "{}", String::from_utf8_lossy(&info.stdout));
    let again = run("diqid-volume", &["create"], &env, &rundir(&t));
    assert!(stderr(&again).contains("keeping"));
    assert!(run("diqid-volume", &["remove"], &env, &rundir(&t)).status.success());
    assert!(!file.exists());
}

#[test]
fn a_volume_cannot_shrink() {
    if Command::new("qemu-img").arg("--version").output().is_err() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let file = t.path().join("v.qcow2");
    let f = file.to_str().unwrap();
    assert!(run("diqid-volume", &["create"], &[("DOCKER_VOLUME_FILE", f), ("DOCKER_VOLUME_SIZE", "2G")], &rundir(&t)).status.success());
    let out = run("diqid-start", &["true"], &[("DOCKER_VOLUME_FILE", f), ("DOCKER_VOLUME_SIZE", "1G")], &rundir(&t));
    refused(&out, "cannot shrink", &rundir(&t));
    assert!(stderr(&out).contains("(2G)"), "{}", stderr(&out));
    assert!(file.exists());
}

#[test]
fn the_shim_says_when_no_vm_runs() {
    let t = tempfile::tempdir().unwrap();
    let bin = t.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(BIN, bin.join("docker")).unwrap();
    // A stand-in for the real CLI, after the shim on PATH.
    let real = t.path().join("real");
    std::fs::create_dir(&real).unwrap();
    std::fs::write(real.join("docker"), "#!/bin/sh\necho \"real docker: $DOCKER_HOST $*\"\n").unwrap();
    Command::new("chmod").arg("755").arg(real.join("docker")).status().unwrap();
    let path = format!("{}:{}", bin.display(), real.display());
    let shim = |env: &[(&str, &str)]| {
        let mut c = Command::new(bin.join("docker"));
        c.arg("ps").env("PATH", &path).env("DIQID_RUNDIR", rundir(&t)).env_remove("DOCKER_HOST").envs(env.iter().copied());
        c.output().unwrap()
    };
    let out = shim(&[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no DiQiD VM runs"), "{}", stderr(&out));
    assert_eq!(stderr(&out).lines().count(), 1);
    // A DOCKER_HOST of the user's goes to the real CLI untouched.
    let out = shim(&[("DOCKER_HOST", "tcp://elsewhere:2375")]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "real docker: tcp://elsewhere:2375 ps");
}
