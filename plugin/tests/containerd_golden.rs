//! Golden-file tests of the containerd config editor over a corpus of real configs
//! (`tests/containerd_golden/inputs`, see its README). For every case: the expected output files,
//! a second run that changes nothing, and no byte changed outside our stanzas, our `imports` entry
//! and the NRI flag. With the containerd binaries of the integration cache at hand, every output
//! is also fed to the real containerd (`config dump`).
//!
//! `UPDATE_GOLDEN=1 cargo test -p kata-nri-manager --test containerd_golden` rewrites the expected
//! files; review the diff before committing it.

mod containerd_golden {
    use std::collections::BTreeSet;
    use std::fs;
    use std::ops::Range;
    use std::path::{Path, PathBuf};

    use kata_nri_manager::containerd::validate::{ContainerdCheck, DropinCandidate};
    use kata_nri_manager::containerd::{
        ContainerdVersion, DropinChange, DropinRecord, Edit, EditOptions, Mode, OwnershipRecord,
        RuntimeStanza, Schema, apply,
    };
    use similar::{ChangeTag, TextDiff};

    const CONFIG: &str = "/etc/containerd/config.toml";
    const DROPIN: &str = "/etc/containerd/conf.d/kata-nri-manager.toml";
    const K3S_TEMPLATE: &str = "/var/lib/rancher/k3s/agent/etc/containerd/config-v3.toml.tmpl";
    const K3S_CONFIG: &str = "/var/lib/rancher/k3s/agent/etc/containerd/config.toml";

    fn corpus() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/containerd_golden")
    }

    fn v17() -> ContainerdVersion {
        ContainerdVersion::new(1, 7)
    }

    fn v21() -> ContainerdVersion {
        ContainerdVersion::new(2, 1)
    }

    fn kata_qemu() -> RuntimeStanza {
        let mut s = RuntimeStanza::new("kata-qemu", "io.containerd.kata-qemu.v2");
        s.runtime_path =
            Some("/opt/kata-nri-manager/bin/gate/kata-qemu/containerd-shim-kata-v2".into());
        s.privileged_without_host_devices = Some(true);
        s.pod_annotations = vec!["io.katacontainers.config.hypervisor.*".into()];
        s.config_path =
            Some("/opt/kata-nri-manager/artifacts/kata-qemu/configuration-qemu.toml".into());
        s
    }

    fn kata_clh() -> RuntimeStanza {
        let mut s = RuntimeStanza::new("kata-clh", "io.containerd.kata-clh.v2");
        s.runtime_path = Some("/opt/kata/bin/containerd-shim-kata-v2".into());
        s.container_annotations = vec!["io.katacontainers.container.*".into()];
        s.snapshotter = Some("overlayfs".into());
        s.config_path =
            Some("/opt/kata-nri-manager/artifacts/kata-clh/configuration-clh.toml".into());
        s.extra_options
            .insert("SandboxCgroupOnly".into(), true.into());
        s
    }

    fn kata_gpu() -> RuntimeStanza {
        let mut s = RuntimeStanza::new(
            "kata-qemu-nvidia-gpu",
            "io.containerd.kata-qemu-nvidia-gpu.v2",
        );
        s.runtime_path = Some(
            "/opt/kata-nri-manager/bin/gate/kata-qemu-nvidia-gpu/containerd-shim-kata-v2".into(),
        );
        s.privileged_without_host_devices = Some(true);
        s.config_path = Some(
            "/opt/kata-nri-manager/artifacts/kata-qemu-nvidia-gpu/configuration-nvidia-gpu-qemu.toml".into(),
        );
        s
    }

    fn owning(names: &[&str]) -> OwnershipRecord {
        OwnershipRecord {
            config_path: Some(CONFIG.into()),
            runtimes: names.iter().map(|n| n.to_string()).collect(),
            ..OwnershipRecord::default()
        }
    }

    fn with_dropin(mut record: OwnershipRecord) -> OwnershipRecord {
        record.dropin = Some(DropinRecord {
            path: DROPIN.into(),
            import_entry: Some(DROPIN.into()),
            created_imports_key: false,
        });
        record
    }

    /// Where a case's main text comes from.
    enum Input {
        /// A file of `inputs/`.
        File(&'static str),
        /// No file at all.
        Missing,
        /// The expected output of another case (a second step on a config we already edited).
        ExpectedOf(&'static str),
    }

    struct Case {
        name: &'static str,
        input: Input,
        /// The drop-in as another case left it.
        dropin_of: Option<&'static str>,
        config_path: &'static str,
        mode: Mode,
        containerd: ContainerdVersion,
        desired: Vec<RuntimeStanza>,
        owned: OwnershipRecord,
        adopt: &'static [&'static str],
        enable_nri: bool,
        /// The main output must equal this input file (an uninstall gives the original back).
        equals_input: Option<&'static str>,
    }

    impl Case {
        fn new(
            name: &'static str,
            input: Input,
            containerd: ContainerdVersion,
            desired: Vec<RuntimeStanza>,
        ) -> Self {
            Self {
                name,
                input,
                dropin_of: None,
                config_path: CONFIG,
                mode: Mode::Auto,
                containerd,
                desired,
                owned: OwnershipRecord::default(),
                adopt: &[],
                enable_nri: true,
                equals_input: None,
            }
        }

        fn mode(mut self, mode: Mode) -> Self {
            self.mode = mode;
            self
        }

        fn owned(mut self, owned: OwnershipRecord) -> Self {
            self.owned = owned;
            self
        }

        fn path(mut self, path: &'static str) -> Self {
            self.config_path = path;
            self
        }

        fn adopt(mut self, names: &'static [&'static str]) -> Self {
            self.adopt = names;
            self
        }

        fn dropin_of(mut self, case: &'static str) -> Self {
            self.dropin_of = Some(case);
            self
        }

        fn equals_input(mut self, file: &'static str) -> Self {
            self.equals_input = Some(file);
            self
        }

        fn options(&self, dropin_text: Option<String>) -> EditOptions {
            EditOptions {
                config_path: self.config_path.into(),
                dropin_path: Some(DROPIN.into()),
                dropin_text,
                containerd_version: Some(self.containerd),
                adopt: self.adopt.iter().map(|n| n.to_string()).collect(),
                enable_nri: self.enable_nri,
            }
        }

        fn input_text(&self) -> String {
            match self.input {
                Input::File(file) => read(&corpus().join("inputs").join(file)),
                Input::Missing => String::new(),
                Input::ExpectedOf(case) => read(&expected_dir(case).join("config.toml")),
            }
        }

        fn dropin_text(&self) -> Option<String> {
            self.dropin_of
                .map(|case| read(&expected_dir(case).join("dropin.toml")))
        }

        fn run(&self) -> Result<Edit, String> {
            apply(
                &self.input_text(),
                &self.desired,
                &self.owned,
                self.mode,
                &self.options(self.dropin_text()),
            )
            .map_err(|e| e.to_string())
        }

        /// Every runtime name the case touches: ours and the ones it adopts or removes.
        fn involved(&self) -> BTreeSet<String> {
            let mut names: BTreeSet<String> = self.desired.iter().map(|s| s.name.clone()).collect();
            names.extend(self.owned.runtimes.iter().cloned());
            names.extend(self.adopt.iter().map(|n| n.to_string()));
            names
        }
    }

    fn cases() -> Vec<Case> {
        use Input::*;
        vec![
            // containerd 2.1's `config default`: inline, then the default (auto → drop-in).
            Case::new(
                "v3-default-inline",
                File("containerd-2.1-default.toml"),
                v21(),
                vec![kata_qemu(), kata_clh()],
            )
            .mode(Mode::Inline),
            Case::new(
                "v3-default-auto",
                File("containerd-2.1-default.toml"),
                v21(),
                vec![kata_qemu(), kata_clh()],
            ),
            // containerd 1.7's `config default`: auto is inline; NRI gets switched on.
            Case::new(
                "v2-default-auto",
                File("containerd-1.7-default.toml"),
                v17(),
                vec![kata_qemu(), kata_clh()],
            ),
            Case::new(
                "v2-default-dropin-refused",
                File("containerd-1.7-default.toml"),
                v17(),
                vec![kata_qemu()],
            )
            .mode(Mode::Dropin),
            // Comments, tabs, single-quoted keys, dotted keys, inline-table runtimes, no final newline.
            Case::new(
                "odd-formatting-v2",
                File("odd-formatting-v2.toml"),
                v17(),
                vec![kata_qemu()],
            ),
            Case::new(
                "odd-formatting-v2-operators-kata",
                File("odd-formatting-v2.toml"),
                v17(),
                vec![RuntimeStanza::new("kata", "io.containerd.kata.v2")],
            ),
            // CRLF line ends, a multi-line imports list, NRI switched off by the operator.
            Case::new(
                "crlf-v3-inline",
                File("crlf-v3.toml"),
                v21(),
                vec![kata_qemu()],
            )
            .mode(Mode::Inline),
            Case::new(
                "crlf-v3-auto",
                File("crlf-v3.toml"),
                v21(),
                vec![kata_qemu()],
            ),
            // k3s: the generated file is refused, its template is edited.
            Case::new(
                "k3s-generated-refused",
                File("k3s-generated-config.toml"),
                v21(),
                vec![kata_qemu()],
            )
            .path(K3S_CONFIG),
            Case::new(
                "k3s-template",
                File("k3s-config-v3.toml.tmpl"),
                v21(),
                vec![kata_qemu()],
            )
            .path(K3S_TEMPLATE),
            // kata-deploy's stanzas: never touched unless adopted; ours go after them.
            Case::new(
                "kata-deploy-conflict",
                File("kata-deploy-v2.toml"),
                v17(),
                vec![kata_qemu()],
            ),
            Case::new(
                "kata-deploy-adopt",
                File("kata-deploy-v2.toml"),
                v17(),
                vec![kata_qemu()],
            )
            .adopt(&["kata-qemu"]),
            Case::new(
                "kata-deploy-alongside",
                File("kata-deploy-v2.toml"),
                v17(),
                vec![kata_gpu()],
            ),
            // Nothing to start from.
            Case::new("empty-v2", File("empty.toml"), v17(), vec![kata_qemu()]),
            Case::new("missing-v3", Missing, v21(), vec![kata_qemu()]),
            Case::new(
                "comments-only-v3-inline",
                File("comments-only.toml"),
                v21(),
                vec![kata_qemu()],
            )
            .mode(Mode::Inline),
            // An operator's glob already imports our drop-in: the main file stays as it is.
            Case::new(
                "glob-imports-v3",
                File("glob-imports-v3.toml"),
                v21(),
                vec![kata_qemu()],
            ),
            // Second steps on configs we already edited.
            Case::new(
                "v3-remove-one",
                ExpectedOf("v3-default-inline"),
                v21(),
                vec![kata_qemu()],
            )
            .mode(Mode::Inline)
            .owned(owning(&["kata-qemu", "kata-clh"])),
            Case::new(
                "v3-update",
                ExpectedOf("v3-default-inline"),
                v21(),
                vec![
                    RuntimeStanza {
                        runtime_path: Some("/opt/kata/bin/containerd-shim-kata-v2".into()),
                        pod_annotations: Vec::new(),
                        ..kata_qemu()
                    },
                    kata_clh(),
                ],
            )
            .mode(Mode::Inline)
            .owned(owning(&["kata-qemu", "kata-clh"])),
            Case::new(
                "v3-uninstall-inline",
                ExpectedOf("v3-default-inline"),
                v21(),
                Vec::new(),
            )
            .mode(Mode::Inline)
            .owned(owning(&["kata-qemu", "kata-clh"]))
            .equals_input("containerd-2.1-default.toml"),
            Case::new(
                "v3-switch-to-dropin",
                ExpectedOf("v3-default-inline"),
                v21(),
                vec![kata_qemu(), kata_clh()],
            )
            .mode(Mode::Dropin)
            .owned(owning(&["kata-qemu", "kata-clh"])),
            Case::new(
                "v3-uninstall-dropin",
                ExpectedOf("v3-default-auto"),
                v21(),
                Vec::new(),
            )
            .dropin_of("v3-default-auto")
            .owned(with_dropin(owning(&["kata-qemu", "kata-clh"])))
            .equals_input("containerd-2.1-default.toml"),
            Case::new(
                "v3-switch-to-inline",
                ExpectedOf("v3-default-auto"),
                v21(),
                vec![kata_qemu(), kata_clh()],
            )
            .mode(Mode::Inline)
            .dropin_of("v3-default-auto")
            .owned(with_dropin(owning(&["kata-qemu", "kata-clh"]))),
            Case::new(
                "v2-uninstall",
                ExpectedOf("v2-default-auto"),
                v17(),
                Vec::new(),
            )
            .owned(OwnershipRecord {
                nri_enabled: true,
                ..owning(&["kata-qemu", "kata-clh"])
            }),
        ]
    }

    fn expected_dir(case: &str) -> PathBuf {
        corpus().join("expected").join(case)
    }

    fn read(path: &Path) -> String {
        fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    }

    fn updating() -> bool {
        std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1")
    }

    /// The files a case's result is made of: name → contents.
    fn outputs(result: &Result<Edit, String>) -> Vec<(&'static str, String)> {
        match result {
            Err(message) => vec![("error.txt", format!("{message}\n"))],
            Ok(edit) => {
                let mut files = vec![("config.toml", edit.main.clone())];
                let dropin = match &edit.dropin {
                    DropinChange::Untouched => "untouched".to_string(),
                    DropinChange::Write { text, .. } => {
                        files.push(("dropin.toml", text.clone()));
                        "write".to_string()
                    }
                    DropinChange::Remove { .. } => "remove".to_string(),
                };
                let changes: Vec<String> = edit.changes.iter().map(|c| format!("{c:?}")).collect();
                files.push((
                    "summary.txt",
                    format!(
                        "schema: {:?}\nplacement: {:?}\ndrop-in: {dropin}\nchanges:\n{}owned: {:?}\n",
                        edit.schema,
                        edit.placement,
                        changes.iter().map(|c| format!("  {c}\n")).collect::<String>(),
                        edit.owned.runtimes,
                    ),
                ));
                files
            }
        }
    }

    /// Compares a case's result with its expected files, or rewrites them under UPDATE_GOLDEN=1.
    fn check_expected(case: &Case, result: &Result<Edit, String>) {
        let dir = expected_dir(case.name);
        let files = outputs(result);
        if updating() {
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            for (name, text) in &files {
                fs::write(dir.join(name), text).unwrap();
            }
            return;
        }
        let mut on_disk: Vec<String> = fs::read_dir(&dir)
            .unwrap_or_else(|e| {
                panic!(
                    "{}: no expected files ({e}); run with UPDATE_GOLDEN=1",
                    case.name
                )
            })
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        let mut names: Vec<String> = files.iter().map(|(n, _)| n.to_string()).collect();
        names.sort();
        assert_eq!(on_disk, names, "{}: expected files differ", case.name);
        for (name, text) in &files {
            let expected = read(&dir.join(name));
            if &expected != text {
                let diff = TextDiff::from_lines(&expected, text)
                    .unified_diff()
                    .header("expected", "actual")
                    .to_string();
                panic!(
                    "{}: {name} differs from the golden file:\n{diff}",
                    case.name
                );
            }
        }
    }

    /// Applying the result again changes nothing at all.
    fn check_idempotent(case: &Case, edit: &Edit) {
        let dropin_text = match &edit.dropin {
            DropinChange::Write { text, .. } => Some(text.clone()),
            DropinChange::Remove { .. } => None,
            DropinChange::Untouched => case.dropin_text(),
        };
        let again = apply(
            &edit.main,
            &case.desired,
            &edit.owned,
            case.mode,
            &case.options(dropin_text),
        )
        .unwrap_or_else(|e| panic!("{}: second run failed: {e}", case.name));
        assert_eq!(
            again.main, edit.main,
            "{}: second run changed the main file",
            case.name
        );
        assert!(
            again.is_noop(),
            "{}: second run is not a no-op: {:?}",
            case.name,
            again.dropin
        );
        assert!(
            again.changes.is_empty(),
            "{}: second run reports {:?}",
            case.name,
            again.changes
        );
        assert_eq!(
            again.owned, edit.owned,
            "{}: second run changed ownership",
            case.name
        );
    }

    /// Line ranges (0-based, inclusive) that may differ between input and output: our stanzas
    /// (involved names), the NRI section, and the `imports` and `version` keys.
    fn allowed_lines(text: &str, path: &str, involved: &BTreeSet<String>) -> Vec<Range<usize>> {
        let masked = mask_template(text, path);
        let Ok(doc) = toml_edit::Document::parse(masked.as_str()) else {
            return Vec::new();
        };
        let line_of = |offset: usize| masked[..offset].matches('\n').count();
        let mut ranges = Vec::new();
        let root = doc.as_table();
        for key in ["imports", "version"] {
            if let (Some(k), Some(v)) = (
                root.key(key).and_then(|k| k.span()),
                root.get(key).and_then(|i| i.span()),
            ) {
                ranges.push(line_of(k.start)..line_of(v.end) + 1);
            }
        }
        let plugins = root.get("plugins").and_then(|p| p.as_table());
        for schema in [Schema::V2, Schema::V3] {
            let runtimes = plugins
                .and_then(|p| p.get(schema.cri_runtime_plugin()))
                .and_then(|p| p.get("containerd"))
                .and_then(|c| c.get("runtimes"))
                .and_then(|r| r.as_table());
            for name in involved {
                if let Some(table) = runtimes
                    .and_then(|r| r.get(name))
                    .and_then(|t| t.as_table())
                {
                    table_lines(table, &line_of, &mut ranges);
                }
            }
        }
        if let Some(nri) = plugins
            .and_then(|p| p.get("io.containerd.nri.v1.nri"))
            .and_then(|t| t.as_table())
        {
            table_lines(nri, &line_of, &mut ranges);
        }
        ranges
    }

    /// From each header of `table`'s subtree to its last value: one blank line before it may come
    /// and go with it (our separator).
    fn table_lines(
        table: &toml_edit::Table,
        line_of: &dyn Fn(usize) -> usize,
        out: &mut Vec<Range<usize>>,
    ) {
        let mut start = table.span().map(|s| line_of(s.start));
        let mut end = start;
        let mut visit = vec![table];
        while let Some(t) = visit.pop() {
            if let Some(span) = t.span().filter(|_| !t.is_implicit() && !t.is_dotted()) {
                let line = line_of(span.start);
                start = Some(start.map_or(line, |s| s.min(line)));
                end = Some(end.map_or(line, |e| e.max(line)));
            }
            for (_, item) in t.iter() {
                match item {
                    toml_edit::Item::Table(child) => visit.push(child),
                    item => {
                        if let Some(span) = item.span() {
                            end = Some(end.map_or(line_of(span.end), |e| e.max(line_of(span.end))));
                        }
                    }
                }
            }
        }
        if let (Some(start), Some(end)) = (start, end) {
            out.push(start.saturating_sub(1)..end + 1);
        }
    }

    fn mask_template(text: &str, path: &str) -> String {
        if !path.ends_with(".tmpl") {
            return text.to_string();
        }
        let mut out = String::new();
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            let close = rest[open..].find("}}").map_or(rest.len(), |i| open + i + 2);
            out.push_str(&rest[..open]);
            out.push_str(&" ".repeat(close - open));
            rest = &rest[close..];
        }
        out.push_str(rest);
        out
    }

    /// Every line that differs between input and output lies in an allowed range (of the input
    /// for removed lines, of the output for added ones); equal lines are byte-equal, line ends
    /// included. The one tolerated foreign change: a final line gains its missing newline.
    fn check_foreign_bytes_kept(case: &Case, input: &str, output: &str) {
        let involved = case.involved();
        let input_allowed = allowed_lines(input, case.config_path, &involved);
        let output_allowed = allowed_lines(output, case.config_path, &involved);
        let diff = TextDiff::from_lines(input, output);
        let last_line_without_newline = (!input.is_empty() && !input.ends_with('\n'))
            .then(|| input.rsplit('\n').next().unwrap_or_default().to_string());
        for change in diff.iter_all_changes() {
            let (allowed, index) = match change.tag() {
                ChangeTag::Equal => continue,
                ChangeTag::Delete => (&input_allowed, change.old_index()),
                ChangeTag::Insert => (&output_allowed, change.new_index()),
            };
            let index = index.unwrap_or_default();
            let line = change.value();
            let newline_added = last_line_without_newline
                .as_deref()
                .is_some_and(|last| line.trim_end_matches(['\r', '\n']) == last);
            // A blank line next to a block is our separator; diffs may pair it either side.
            let blank = line.trim().is_empty();
            let in_allowed = allowed
                .iter()
                .any(|r| r.contains(&index) || (blank && index == r.end));
            assert!(
                in_allowed || newline_added,
                "{}: a foreign line changed ({:?} at line {}): {line:?}",
                case.name,
                change.tag(),
                index + 1
            );
        }
    }

    #[test]
    fn containerd_golden_corpus() {
        let mut failures = Vec::new();
        for case in cases() {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let result = case.run();
                check_expected(&case, &result);
                if let Ok(edit) = &result {
                    check_idempotent(&case, edit);
                    check_foreign_bytes_kept(&case, &case.input_text(), &edit.main);
                    if let Some(file) = case.equals_input {
                        let original = read(&corpus().join("inputs").join(file));
                        assert_eq!(
                            edit.main, original,
                            "{}: the original is not restored",
                            case.name
                        );
                    }
                }
            }));
            if outcome.is_err() {
                failures.push(case.name);
            }
        }
        assert!(failures.is_empty(), "failed cases: {failures:?}");
    }

    /// Errors are part of the corpus (their `error.txt`); these say what each refusal must name.
    #[test]
    fn containerd_golden_refusals_say_what_to_do() {
        let by_name = |name: &str| cases().into_iter().find(|c| c.name == name).unwrap();
        let err = by_name("kata-deploy-conflict").run().unwrap_err();
        assert!(
            err.contains("runtime \"kata-qemu\"")
                && err.contains("adopt")
                && err.contains("rename"),
            "{err}"
        );
        let err = by_name("odd-formatting-v2-operators-kata")
            .run()
            .unwrap_err();
        assert!(err.contains("runtime \"kata\""), "{err}");
        let err = by_name("k3s-generated-refused").run().unwrap_err();
        assert!(err.contains(K3S_TEMPLATE), "{err}");
        let err = by_name("v2-default-dropin-refused").run().unwrap_err();
        assert!(err.contains("mode inline or auto"), "{err}");
    }

    /// The containerd binaries the integration harness caches (`integration/scripts/fetch-deps.sh`
    /// writes their paths to `.cache/e2e/env.sh`); the environment wins over the file.
    fn containerd_binary(var: &str) -> Option<PathBuf> {
        let prefix = std::env::var(var).ok().or_else(|| {
            let env_sh = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/e2e/env.sh");
            let text = fs::read_to_string(env_sh).ok()?;
            text.lines().find_map(|line| {
                let value = line.strip_prefix(&format!("export {var}="))?;
                Some(value.trim_matches(['\'', '"']).to_string())
            })
        })?;
        let binary = Path::new(&prefix).join("bin/containerd");
        binary.is_file().then_some(binary)
    }

    #[test]
    fn containerd_golden_outputs_are_accepted_by_containerd() {
        let binaries = [
            (
                Schema::V2,
                "KNM_CONTAINERD_1_7",
                containerd_binary("KNM_CONTAINERD_1_7"),
            ),
            (
                Schema::V3,
                "KNM_CONTAINERD_2_1",
                containerd_binary("KNM_CONTAINERD_2_1"),
            ),
        ];
        let mut checked = 0;
        for case in cases() {
            let Ok(edit) = case.run() else { continue };
            if case.config_path.ends_with(".tmpl") {
                println!(
                    "{}: skipped, a template is checked once k3s renders it",
                    case.name
                );
                continue;
            }
            let Some((_, var, binary)) = binaries
                .iter()
                .find(|(schema, _, _)| *schema == edit.schema)
            else {
                continue;
            };
            let Some(binary) = binary else {
                println!(
                    "{}: skipped, no containerd binary ({var} unset and no .cache/e2e/env.sh: run integration/scripts/fetch-deps.sh)",
                    case.name
                );
                continue;
            };
            // A private directory stands in for /etc/containerd: the check writes temp files
            // next to the main file.
            let dir = tempfile::tempdir().unwrap();
            let main_path = dir.path().join("config.toml");
            let dropin = match &edit.dropin {
                DropinChange::Write { text, .. } => Some(text.clone()),
                DropinChange::Untouched => case.dropin_text(),
                DropinChange::Remove { .. } => None,
            };
            let candidate = dropin.as_deref().map(|text| DropinCandidate {
                path: Path::new(DROPIN),
                text,
            });
            let runtimes: Vec<&str> = case.desired.iter().map(|s| s.name.as_str()).collect();
            let accepted = ContainerdCheck::new(binary)
                .check(&main_path, &edit.main, candidate, &runtimes)
                .unwrap_or_else(|e| panic!("{}: {e}", case.name));
            let about_ours = accepted
                .warnings
                .iter()
                .find(|w| runtimes.iter().any(|r| w.contains(r)));
            if let Some(warning) = about_ours {
                panic!(
                    "{}: containerd warns about our stanza: {warning}",
                    case.name
                );
            }
            checked += 1;
        }
        println!("{checked} golden outputs accepted by containerd");
    }

    /// containerd's own reasons reach the error: a value of the wrong type, a version 1.7 cannot
    /// read, and an operator's import of a missing file that silently hides our drop-in.
    #[test]
    fn containerd_check_reports_what_containerd_says() {
        let (Some(v21), Some(v17)) = (
            containerd_binary("KNM_CONTAINERD_2_1"),
            containerd_binary("KNM_CONTAINERD_1_7"),
        ) else {
            println!("skipped: no containerd binaries (run integration/scripts/fetch-deps.sh)");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("config.toml");
        let bad_type = "version = 3\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.kata]\nruntime_type = 5\n";
        let err = ContainerdCheck::new(&v21)
            .check(&main, bad_type, None, &["kata"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("refuses") && err.contains("cannot decode TOML integer"),
            "{err}"
        );
        assert!(
            !err.contains(".kata-nri-manager-validate-"),
            "temp names are replaced: {err}"
        );

        let err = ContainerdCheck::new(&v17)
            .check(&main, "version = 3\n", None, &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("unsupported config version `3`"), "{err}");

        let stale = dir.path().join("gone.toml");
        let main_text = format!(
            "version = 3\nimports = [{:?}, {:?}]\n",
            stale.display().to_string(),
            DROPIN
        );
        let dropin = DropinCandidate {
            path: Path::new(DROPIN),
            text: "version = 3\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.kata]\nruntime_type = 'io.containerd.kata.v2'\n",
        };
        let err = ContainerdCheck::new(&v21)
            .check(&main, &main_text, Some(dropin), &["kata"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("does not see runtime \"kata\"")
                && err.contains("gone.toml does not exist"),
            "{err}"
        );
    }
}
