//! CPU time and RSS of the stack's processes (from `/proc`, via the pid files of
//! `.local/pids`), for the benchmarks.

use std::path::Path;

/// utime + stime (seconds) and RSS (KiB) of a process.
pub fn proc_usage(pid: u32) -> Option<(f64, u64)> {
    let fields = stat_fields(pid)?;
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((ticks as f64 / 100.0, rss))
}

/// The fields of `/proc/<pid>/stat` after the command name (the state first, then the parent).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(
        stat.rsplit_once(") ")?
            .1
            .split(' ')
            .map(str::to_owned)
            .collect(),
    )
}

/// The processes of several stacks (`make regions`: `.local/pids`, `.local/region-b/pids`,
/// `.local/mirrormaker/pids`), each name prefixed with its stack's folder (`region-b:kafka`).
pub fn processes_of(dirs: &[std::path::PathBuf]) -> Vec<(String, u32)> {
    if let [one] = dirs {
        return processes(one);
    }
    let mut out: Vec<(String, u32)> = Vec::new();
    for dir in dirs {
        let label = dir
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().trim_start_matches('.').to_owned())
            .unwrap_or_default();
        out.extend(
            processes(dir)
                .into_iter()
                .filter(|(_, pid)| *pid != std::process::id())
                .map(|(name, pid)| (format!("{label}:{name}"), pid)),
        );
    }
    out.push(("this benchmark".into(), std::process::id()));
    out.sort();
    out
}

pub fn processes(dir: &Path) -> Vec<(String, u32)> {
    let mut out: Vec<(String, u32)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e
                .file_name()
                .to_string_lossy()
                .strip_suffix(".pid")?
                .to_owned();
            let pid = std::fs::read_to_string(e.path())
                .ok()?
                .trim()
                .parse()
                .ok()?;
            Some((name, pid))
        })
        .collect();
    out.push(("this benchmark".into(), std::process::id()));
    out.sort();
    out
}

/// `procs` and the function instances that each `lambda` among them (`cargo lambda watch`)
/// runs as its children, named `<lambda's name>/<function>` (`lambda/offline-delivery`).
fn with_functions(procs: Vec<(String, u32)>) -> Vec<(String, u32)> {
    let runners: Vec<(String, u32)> = procs
        .iter()
        .filter(|(name, _)| name.rsplit(':').next() == Some("lambda"))
        .cloned()
        .collect();
    if runners.is_empty() {
        return procs;
    }
    let mut out = procs;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if out.iter().any(|(_, p)| *p == pid) {
            continue;
        }
        let Some(parent) = stat_fields(pid).and_then(|fields| fields.get(1)?.parse::<u32>().ok())
        else {
            continue;
        };
        let Some((runner, _)) = runners.iter().find(|(_, p)| *p == parent) else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let program = cmdline.split(|b| *b == 0).next().unwrap_or_default();
        let program = String::from_utf8_lossy(program);
        let function = program.rsplit('/').next().unwrap_or_default();
        out.push((format!("{runner}/{function}"), pid));
    }
    out
}

/// CPU and RSS of every process between [`Usage::start`] and [`Usage::stop`].
pub struct Usage {
    procs: Vec<(String, u32)>,
    before: Vec<Option<(f64, u64)>>,
    after: Vec<Option<(f64, u64)>>,
}

impl Usage {
    pub fn start(pids: &Path) -> Self {
        Self::start_all(&[pids.to_path_buf()])
    }

    /// [`Self::start`] over several stacks' pid folders.
    pub fn start_all(dirs: &[std::path::PathBuf]) -> Self {
        let procs = with_functions(processes_of(dirs));
        let before = procs.iter().map(|(_, pid)| proc_usage(*pid)).collect();
        Self {
            procs,
            before,
            after: Vec::new(),
        }
    }

    /// Function instances started meanwhile (`cargo lambda watch` starts them on demand) count
    /// from zero.
    pub fn stop(mut self) -> Self {
        for (name, pid) in with_functions(self.procs.clone()) {
            if !self.procs.iter().any(|(_, p)| *p == pid) {
                self.procs.push((name, pid));
                self.before.push(Some((0.0, 0)));
            }
        }
        self.after = self.procs.iter().map(|(_, pid)| proc_usage(*pid)).collect();
        self
    }

    /// Prints cores used over `secs` and RSS per process; returns the CPU seconds of the hot
    /// path (gateways + messaging).
    /// A function's instances are summed in one row (`lambda/<function> ×<instances>`).
    pub fn print(&self, secs: f64) -> f64 {
        println!("process                 CPU (cores)   RSS MiB");
        let mut hot_path_cpu = 0.0;
        let mut rows: std::collections::BTreeMap<&str, (f64, u64, usize)> = Default::default();
        for ((name, _), (b, a)) in self.procs.iter().zip(self.before.iter().zip(&self.after)) {
            if let (Some((cb, _)), Some((ca, rss))) = (b, a) {
                let short = name.rsplit(':').next().unwrap_or(name);
                if short.starts_with("gateway") || short.starts_with("messaging") {
                    hot_path_cpu += ca - cb;
                }
                let row = rows.entry(name).or_default();
                *row = (row.0 + ca - cb, row.1 + rss, row.2 + 1);
            }
        }
        for (name, (cpu, rss, n)) in rows {
            let name = if n > 1 {
                format!("{name} ×{n}")
            } else {
                name.to_owned()
            };
            println!(
                "  {name:<22} {:>8.2}      {:>8.1}",
                cpu / secs,
                rss as f64 / 1024.0
            );
        }
        hot_path_cpu
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_process_reads_its_own_parent_and_usage() {
        let me = std::process::id();
        let parent: u32 = super::stat_fields(me).unwrap()[1].parse().unwrap();
        assert_eq!(parent, std::os::unix::process::parent_id());
        assert!(super::proc_usage(me).is_some_and(|(_, rss)| rss > 0));
    }
}
