//! `--heap-profile`: where the heap of one process holding K elections goes, by owner.
//!
//! The scale child runs once more under `valgrind --tool=massif`, which records the
//! call stack of every live allocation. From its last detailed snapshot (after the
//! measuring window, with every election led) each allocation is charged to the first
//! frame of this library on its stack, or to the task it was spawned as; what massif
//! left below its threshold is one row.

use std::collections::HashMap;
use std::path::Path;

use leaderelection_testkit::child::Command;

use crate::scale::{ScaleSpec, ROLE};

/// Bytes live at the last detailed snapshot, by owner, largest first; and the total.
pub struct Profile {
    pub k: usize,
    pub heap: u64,
    /// malloc's own bookkeeping, beyond what was asked for.
    pub extra: u64,
    pub owners: Vec<(String, u64)>,
}

/// Runs the scale child for `spec` under massif and charges its heap to owners.
pub fn profile(spec: &ScaleSpec) -> Result<Profile, String> {
    let out = std::env::temp_dir().join(format!("leaderelection-massif-{}", std::process::id()));
    let mut child = Command::role(ROLE, spec)
        .map_err(|e| e.to_string())?
        .prefix([
            "valgrind".into(),
            "--tool=massif".into(),
            "--depth=60".into(),
            "--threshold=0.2".into(),
            format!("--massif-out-file={}", out.display()),
        ])
        .spawn()
        .map_err(|e| {
            format!("cannot run the scale child under valgrind (is it installed?): {e}")
        })?;
    let status = child.wait().map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!(
            "the scale child under valgrind exited with {status}"
        ));
    }
    let profile = parse(&out, spec.k);
    let _ = std::fs::remove_file(&out);
    profile
}

fn parse(path: &Path, k: usize) -> Result<Profile, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let snapshot = text
        .rsplit("snapshot=")
        .find(|s| s.contains("heap_tree=detailed"))
        .ok_or("massif wrote no detailed snapshot")?;
    let field = |name: &str| -> u64 {
        snapshot
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let (heap, extra) = (field("mem_heap_B"), field("mem_heap_extra_B"));
    // The tree: one node a line, indented by depth; children are callers.
    let nodes: Vec<(usize, u64, String)> = snapshot
        .lines()
        .skip_while(|l| !l.starts_with("heap_tree="))
        .skip(1)
        .filter_map(|l| {
            let depth = l.len() - l.trim_start().len();
            let (_, rest) = l.trim_start().split_once(": ")?;
            let (bytes, what) = rest.split_once(' ')?;
            Some((depth, bytes.parse().ok()?, what.to_owned()))
        })
        .collect();
    let mut owners: HashMap<String, u64> = HashMap::new();
    charge(&nodes, 0, &mut Vec::new(), &mut owners);
    let mut owners: Vec<(String, u64)> = owners.into_iter().filter(|(_, b)| *b > 0).collect();
    owners.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Ok(Profile {
        k,
        heap,
        extra,
        owners,
    })
}

/// Charges the subtree at `i` (its stack so far in `stack`) and returns the index
/// after it.
fn charge(
    nodes: &[(usize, u64, String)],
    i: usize,
    stack: &mut Vec<String>,
    owners: &mut HashMap<String, u64>,
) -> usize {
    let (depth, bytes, what) = &nodes[i];
    let frame = symbol(what);
    if let Some(owner) = owner_of(stack, &frame) {
        *owners.entry(owner).or_default() += bytes;
        return skip(nodes, i);
    }
    stack.push(frame);
    let mut j = i + 1;
    let mut charged = 0;
    while j < nodes.len() && nodes[j].0 > *depth {
        charged += nodes[j].1;
        j = charge(nodes, j, stack, owners);
    }
    let frame = stack.pop().unwrap_or_default();
    let rest = bytes.saturating_sub(charged);
    if rest > 0 {
        let owner = if j == i + 1 && !frame.starts_with("in ") {
            // A whole stack with no frame of ours: its outermost frame names it.
            format!("outside the library: {frame}")
        } else {
            "allocations massif grouped below its threshold".to_owned()
        };
        *owners.entry(owner).or_default() += rest;
    }
    j
}

fn skip(nodes: &[(usize, u64, String)], i: usize) -> usize {
    let depth = nodes[i].0;
    let mut j = i + 1;
    while j < nodes.len() && nodes[j].0 > depth {
        j += 1;
    }
    j
}

/// The owner of an allocation whose stack, from the allocator out, is `stack` then
/// `frame`: the first frame of the library, as a task when it was spawned.
fn owner_of(stack: &[String], frame: &str) -> Option<String> {
    let ours = frame.starts_with("leaderelection::") || frame.starts_with("<leaderelection::");
    let spawned = stack
        .iter()
        .any(|f| f.starts_with("tokio::runtime::task::core::Cell"));
    if ours {
        return Some(if spawned {
            format!("a task spawned by {frame}")
        } else {
            frame.to_owned()
        });
    }
    if frame.starts_with("election::scale::hold") {
        // The task's body is `LeaderElector::run`, which the compiler inlines there:
        // the loop's boxed campaign or term.
        return Some(
            "`LeaderElector::run`, inlined into its task: the term it boxes while leading".into(),
        );
    }
    if spawned && frame.starts_with("election::") {
        return Some(format!(
            "a task spawned by the benchmark ({frame}): the elector's `run` future"
        ));
    }
    None
}

/// `0x1234: path::to::fn (in /bin)` as `path::to::fn`, closures folded into their fn.
fn symbol(what: &str) -> String {
    let s = what.split_once(": ").map_or(what, |(_, s)| s);
    let s = s.rsplit_once(" (in ").map_or(s, |(s, _)| s);
    s.replace("::{{closure}}", "")
}

/// The profile as a table, per election.
pub fn table(p: &Profile) -> String {
    let k = p.k.max(1) as f64;
    let mut out = format!(
        "Heap of one process holding {} elections on the memory lock, after the window \
         (valgrind's massif, `--heap-profile`): {:.1} KiB asked for per election, plus \
         {:.1} KiB of malloc's bookkeeping. Each allocation is charged to the first frame \
         of the library on its stack.\n\n| owner | per election | share |\n| --- | --- | --- |\n",
        p.k,
        p.heap as f64 / k / 1024.0,
        p.extra as f64 / k / 1024.0,
    );
    for (owner, bytes) in &p.owners {
        out.push_str(&format!(
            "| {} | {:.0} B | {:.1} % |\n",
            owner.replace('|', "\\|"),
            *bytes as f64 / k,
            100.0 * *bytes as f64 / p.heap.max(1) as f64
        ));
    }
    out
}
