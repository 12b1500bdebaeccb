//! Crash safety: an import killed at any point leaves the registry consistent, with the
//! version wholly present or wholly absent, and the import can simply be run again.

use std::process::Command;

use crate::registry::Site;
use crate::support::{airlock, run};

/// Fault points an import passes, as the binary reports them.
fn fault_points(site: &mut Site, bundle: &std::path::Path) -> Vec<String> {
    site.reset("probe");
    let out = run(airlock()
        .arg("--data")
        .arg(&site.data)
        .arg("import")
        .arg(bundle)
        .env("AIRLOCK_FAULT_TRACE", "1"))
    .ok();
    out.stderr
        .lines()
        .filter_map(|l| l.strip_prefix("airlock-fault-point "))
        .map(str::to_owned)
        .collect()
}

#[test]
fn an_import_killed_at_every_fault_point_leaves_the_version_whole_or_absent() {
    let mut site = Site::new();
    let bundle = site.bundle("a", "1.0.0", "publisher", &[]);
    let points = fault_points(&mut site, &bundle);
    assert!(
        points.len() >= 20,
        "only {} fault points: {points:?}",
        points.len()
    );
    for point in &points {
        let n: u32 = point.split(' ').next().unwrap().parse().unwrap();
        site.reset(&format!("data-{n}"));
        let status = Command::new(env!("CARGO_BIN_EXE_airlock"))
            .arg("--data")
            .arg(&site.data)
            .arg("import")
            .arg(&bundle)
            .env("AIRLOCK_FAULT_KILL_AT", n.to_string())
            .output()
            .unwrap()
            .status;
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(status.signal(), Some(9), "not killed at point {point}");

        let fsck = site.cmd(&["fsck", "--json"]);
        assert_eq!(
            fsck.code, 0,
            "fsck after a kill at {point}: {}",
            fsck.stdout
        );
        assert_eq!(fsck.json()["clean"], true, "after a kill at {point}");
        let listing = site.ls();
        match listing.as_slice() {
            [] => {}
            [v] => {
                assert_eq!(v["version"], "1.0.0");
                assert_eq!(v["state"], "quarantined");
            }
            more => panic!("after a kill at {point}: {more:?}"),
        }
        // Whatever the crash left, importing again completes the job.
        let again = site.import(&bundle).ok().json();
        assert_eq!(
            again["already_present"],
            listing.len() == 1,
            "after a kill at {point}"
        );
        assert_eq!(site.ls().len(), 1);
        assert_eq!(site.cmd(&["fsck", "--json"]).ok().json()["clean"], true);
        // A version present after the crash has its import in the audit log.
        site.cmd(&["audit", "verify"]).ok();
        let imports = site
            .audit_tail(20)
            .iter()
            .filter(|e| e["action"] == "import" && e["outcome"] == "ok")
            .count();
        assert!(imports >= 1, "after a kill at {point}");
        site.approve("tiny:1.0.0", "approver").ok();
    }
}

#[test]
fn two_processes_importing_at_once_both_succeed() {
    let site = Site::new();
    for round in 0..5 {
        let bundles: Vec<_> = ["left", "right"]
            .iter()
            .map(|name| {
                site.bundle_named(
                    name,
                    &format!("{name}{round}"),
                    &format!("1.{round}.0"),
                    "publisher",
                    &[],
                )
            })
            .collect();
        let children: Vec<_> = bundles
            .iter()
            .map(|b| {
                Command::new(env!("CARGO_BIN_EXE_airlock"))
                    .arg("--data")
                    .arg(&site.data)
                    .args(["import", "--json"])
                    .arg(b)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in children {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    assert_eq!(site.ls().len(), 10);
    assert_eq!(site.cmd(&["fsck", "--json"]).ok().json()["clean"], true);
    let verified = site.cmd(&["audit", "verify", "--json"]).ok().json();
    assert!(verified["entries"].as_u64().unwrap() >= 13);
}
