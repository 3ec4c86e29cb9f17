//! Dynamic debug on a run (`run --dyndbg QUERY`): the kernel's own query
//! language (Documentation/admin-guide/dynamic-debug-howto.rst), carried on
//! the kernel command line so that it takes effect before the first
//! `pr_debug` of interest, the events modules' probe included.
//!
//! The kernel applies a boot-time `dyndbg="QUERY"` only to code built in;
//! a module gets `MODULE.dyndbg="QUERY"` as a load parameter, which
//! modprobe (here: the agent, which loads the events modules) takes from
//! the command line. A query naming one of the events modules goes to that
//! module alone; a query naming no module, or a glob, goes to the kernel
//! and to every events module it can match.
//!
//! The kernel accepts a query that matches no call site without a word, so
//! once the guest is up the bench reads `/proc/dynamic_debug/control` and
//! refuses a query that matched nothing, before any step runs.

use std::fmt;

use crate::failure::Failure;
use crate::glob::glob;

/// The events modules the agent loads, by their module names.
pub const EVENT_MODULES: [&str; 2] = ["kmessage", "kevent_thermal"];

/// Where the guest lists its call sites and their flags.
pub const CONTROL: &str = "/proc/dynamic_debug/control";

/// The query keywords of Linux 6.12, each followed by its argument.
const KEYWORDS: [&str; 6] = ["func", "file", "module", "format", "line", "class"];

/// The flags a query may set, clear or assign (`_`: none).
const FLAGS: &str = "pmfslt_";

/// One dynamic debug query, as `--dyndbg` gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The query as the user wrote it.
    pub text: String,
    /// Its match clauses, keyword and argument, in order.
    clauses: Vec<(String, String)>,
    /// The flags operation: `+p`, `-p`, `=pmf`, `=_`.
    flags: String,
}

impl Query {
    /// Checks `text`'s form: `KEYWORD ARG`... then `[+-=]FLAGS`.
    pub fn parse(text: &str) -> Result<Query, String> {
        let bad = |why: String| Err(format!("--dyndbg {text:?}: {why}"));
        if text.contains(';') || text.contains('\n') {
            return bad("one query per --dyndbg; repeat the flag for more".into());
        }
        if text.contains('"') || text.contains('\'') {
            return bad("quotes cannot travel on the kernel command line; write a space in a format as \\040 \
                 (format \"temperature\\040high\")"
                .into());
        }
        let words: Vec<&str> = text.split_whitespace().collect();
        let Some((flags, clauses)) = words.split_last() else {
            return bad("empty; e.g. 'module kevent_thermal +p'".into());
        };
        let op_ok = flags.len() >= 2 && flags.starts_with(['+', '-', '=']) || *flags == "=";
        if !op_ok || !flags[1..].chars().all(|c| FLAGS.contains(c)) {
            return bad(format!(
                "{flags:?} is not a flags operation: expected +, - or = and flags of {FLAGS:?} (p prints), e.g. +p"
            ));
        }
        if clauses.len() % 2 != 0 {
            return bad(format!("{:?} has no argument: every keyword takes one", clauses[clauses.len() - 1]));
        }
        let mut parsed = Vec::new();
        for pair in clauses.chunks(2) {
            let (keyword, argument) = (pair[0], pair[1]);
            if !KEYWORDS.contains(&keyword) {
                return bad(format!("{keyword:?} is not a keyword: expected one of {}", KEYWORDS.join(", ")));
            }
            if parsed.iter().any(|(k, _)| k == keyword) {
                return bad(format!("{keyword} is given twice"));
            }
            if keyword == "line" && parse_lines(argument).is_none() {
                return bad(format!("line {argument:?}: expected N, N-M, N- or -M"));
            }
            parsed.push((keyword.to_owned(), argument.to_owned()));
        }
        Ok(Query { text: text.to_owned(), clauses: parsed, flags: (*flags).to_owned() })
    }

    fn clause(&self, keyword: &str) -> Option<&str> {
        self.clauses.iter().find(|(k, _)| k == keyword).map(|(_, a)| a.as_str())
    }

    /// The query without its `module` clause, as a module's own
    /// `dyndbg=` parameter takes it (the kernel fills in the module).
    fn without_module(&self) -> String {
        let mut words: Vec<&str> = Vec::new();
        for (k, a) in self.clauses.iter().filter(|(k, _)| k != "module") {
            words.extend([k.as_str(), a.as_str()]);
        }
        words.push(&self.flags);
        words.join(" ")
    }

    /// The kernel command-line words that apply the query where it can
    /// match: the kernel's built-in code, each events module, or both.
    pub fn kernel_args(&self) -> Vec<String> {
        let normalise = |s: &str| s.replace('-', "_");
        let module = self.clause("module").map(normalise);
        let modules: Vec<&str> = EVENT_MODULES
            .into_iter()
            .filter(|m| module.as_deref().is_none_or(|pattern| glob(pattern.as_bytes(), m.as_bytes())))
            .collect();
        let mut args = Vec::new();
        let only_an_events_module = module.as_deref().is_some_and(|m| EVENT_MODULES.contains(&m));
        if !only_an_events_module {
            args.push(format!("dyndbg=\"{}\"", self.text.split_whitespace().collect::<Vec<_>>().join(" ")));
        }
        for m in modules {
            args.push(format!("{m}.dyndbg=\"{}\"", self.without_module()));
        }
        args
    }

    /// Whether the call site `site` is one the query selects, as the
    /// kernel's ddebug_change() decides: a query without a `class` clause
    /// selects only sites of no class, one with it only sites of that class.
    fn selects(&self, site: &Site) -> bool {
        self.clause("class") == site.class.as_deref()
            && self.clauses.iter().all(|(keyword, arg)| self.clause_selects(keyword, arg, site))
    }

    fn clause_selects(&self, keyword: &str, arg: &str, site: &Site) -> bool {
        match keyword {
            "module" => glob(arg.replace('-', "_").as_bytes(), site.module.as_bytes()),
            "func" => glob(arg.as_bytes(), site.function.as_bytes()),
            "file" => {
                let (file, line) = match arg.split_once(':') {
                    Some((file, line)) if parse_lines(line).is_some() => (file, Some(line)),
                    _ => (arg, None),
                };
                let base = site.file.rsplit('/').next().unwrap_or(&site.file);
                (glob(file.as_bytes(), site.file.as_bytes()) || glob(file.as_bytes(), base.as_bytes()))
                    && line.and_then(parse_lines).is_none_or(|(lo, hi)| (lo..=hi).contains(&site.line))
            }
            "line" => parse_lines(arg).is_some_and(|(lo, hi)| (lo..=hi).contains(&site.line)),
            "format" => {
                let wanted = unescape(arg);
                match wanted.strip_prefix('^') {
                    Some(start) => site.format.starts_with(start),
                    None => site.format.contains(&wanted),
                }
            }
            // Decided in `selects`, for the sites without a class too.
            "class" => true,
            _ => unreachable!("Query::parse admits only KEYWORDS"),
        }
    }
}

impl fmt::Display for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The kernel command-line words of `queries`, and `loglevel=8` so that
/// what they switch on (KERN_DEBUG) reaches the console log, unless
/// `kernel_args` (the run's others) chose the console's level already.
pub fn kernel_args(queries: &[Query], kernel_args: &[String]) -> Vec<String> {
    let mut args: Vec<String> = queries.iter().flat_map(Query::kernel_args).collect();
    let level_chosen = kernel_args
        .iter()
        .any(|a| a.starts_with("loglevel=") || ["debug", "quiet", "ignore_loglevel"].contains(&a.as_str()));
    if !queries.is_empty() && !level_chosen {
        args.push(CONSOLE_LEVEL.to_owned());
    }
    args
}

/// The words of `appended` (a run's added kernel words: `--append`'s, then
/// those [`kernel_args`] made of `queries`) that came from `--append`;
/// `None` if `appended` does not end with the queries' words.
pub fn split_appended<'a>(appended: &'a [String], queries: &[Query]) -> Option<&'a [String]> {
    if queries.is_empty() {
        return Some(appended);
    }
    let words = queries.iter().map(|q| q.kernel_args().len()).sum::<usize>();
    // With the console level kernel_args adds unless `--append` chose one,
    // or without it.
    [words + 1, words].into_iter().find_map(|theirs| {
        let (given, tail) = appended.split_at(appended.len().checked_sub(theirs)?);
        (kernel_args(queries, given) == tail).then_some(given)
    })
}

/// The console's log level under `--dyndbg`: KERN_DEBUG messages print.
pub const CONSOLE_LEVEL: &str = "loglevel=8";

/// `N`, `N-M`, `N-`, `-M` as an inclusive range.
fn parse_lines(text: &str) -> Option<(u32, u32)> {
    let number = |s: &str| s.parse::<u32>().ok();
    match text.split_once('-') {
        None => number(text).map(|n| (n, n)),
        Some(("", hi)) => Some((0, number(hi)?)),
        Some((lo, "")) => Some((number(lo)?, u32::MAX)),
        Some((lo, hi)) => Some((number(lo)?, number(hi)?)).filter(|(lo, hi)| lo <= hi),
    }
}

/// The kernel's escapes in a query's format (`\040`, `\n`, `\t`).
fn unescape(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.peek().copied() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('\\') => out.push('\\'),
            Some('"') => out.push('"'),
            Some(d) if d.is_digit(8) => {
                let mut value = 0;
                for _ in 0..3 {
                    match chars.peek().and_then(|c| c.to_digit(8)) {
                        Some(d) => {
                            value = value * 8 + d;
                            chars.next();
                        }
                        None => break,
                    }
                }
                out.push(char::from_u32(value).unwrap_or('?'));
                continue;
            }
            _ => {
                out.push('\\');
                continue;
            }
        }
        chars.next();
    }
    out
}

/// One line of the control file: `file:line [module]function =flags
/// "format"`, then ` class:NAME` for a site of a class.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Site {
    file: String,
    line: u32,
    module: String,
    function: String,
    flags: String,
    format: String,
    /// The site's class; a class the kernel cannot name (`class unknown,
    /// _id:N`) is kept as that text, which no query's class can equal.
    class: Option<String>,
}

fn parse_site(line: &str) -> Option<Site> {
    let (place, rest) = line.split_once(' ')?;
    let (file, number) = place.rsplit_once(':')?;
    let rest = rest.strip_prefix('[')?;
    let (module, rest) = rest.split_once(']')?;
    let (function, rest) = rest.split_once(" =")?;
    let (flags, quoted) = rest.split_once(' ').unwrap_or((rest, ""));
    let quoted = quoted.trim_end();
    let (quoted, class) = match class_suffix(quoted) {
        Some((format, class)) => (format, Some(class)),
        None => (quoted, None),
    };
    let format = quoted.strip_prefix('"').and_then(|f| f.strip_suffix('"')).unwrap_or(quoted);
    Some(Site {
        file: file.to_owned(),
        line: number.parse().ok()?,
        module: module.to_owned(),
        function: function.to_owned(),
        flags: flags.to_owned(),
        format: unescape(format),
        class,
    })
}

/// The quoted format and the class of a control line's end, if it has a
/// class: `"…" class:NAME` or `"…" class unknown, _id:N`. The kernel does
/// not escape a format's quotes (seq_escape_str with ESCAPE_SPACE), but a
/// line without a class ends with its closing quote, which neither form
/// of the suffix can.
fn class_suffix(quoted: &str) -> Option<(&str, String)> {
    let format_end = |format: &str| &quoted[..format.len() + 1];
    if let Some((format, name)) = quoted.rsplit_once("\" class:") {
        if !name.is_empty() && !name.contains(|c: char| c.is_whitespace() || c == '"') {
            return Some((format_end(format), name.to_owned()));
        }
    }
    let (format, id) = quoted.rsplit_once("\" class unknown, _id:")?;
    id.parse::<i64>().ok()?;
    Some((format_end(format), format!("class unknown, _id:{id}")))
}

/// Refuses each query that selects no call site in `control` (the guest's
/// control file); the sites it selected otherwise, for the report.
pub fn check(queries: &[Query], control: &str) -> Result<Vec<usize>, Failure> {
    let sites: Vec<Site> = control.lines().filter(|l| !l.starts_with('#')).filter_map(parse_site).collect();
    let mut counts = Vec::new();
    for (i, query) in queries.iter().enumerate() {
        let selected: Vec<&Site> = sites.iter().filter(|s| query.selects(s)).collect();
        if selected.is_empty() {
            let mut modules: Vec<&str> = sites.iter().map(|s| s.module.as_str()).collect();
            modules.sort_unstable();
            modules.dedup();
            let mut classes: Vec<&str> = sites.iter().filter_map(|s| s.class.as_deref()).collect();
            classes.sort_unstable();
            classes.dedup();
            let classes = match (query.clause("class"), classes.is_empty()) {
                (None, _) => String::new(),
                (Some(_), true) => "; no site has a class".to_owned(),
                (Some(_), false) => {
                    let quoted: Vec<String> = classes.iter().map(|c| format!("{c:?}")).collect();
                    format!("; the classes of its sites: {}", quoted.join(", "))
                }
            };
            return Err(Failure::Refused {
                input: format!("--dyndbg {:?}", query.text),
                reason: format!(
                    "selects no pr_debug call site of the guest kernel ({CONTROL} lists {} sites in {} modules; the \
                     events modules' are in {}{classes})",
                    sites.len(),
                    modules.len(),
                    EVENT_MODULES.join(" and ")
                ),
            });
        }
        // A `+p` that took: each selected site no later query changes
        // shows the flag now.
        if let Some(added) = query.flags.strip_prefix('+') {
            let later = &queries[i + 1..];
            let missing = selected
                .iter()
                .find(|s| !later.iter().any(|q| q.selects(s)) && !added.chars().all(|f| s.flags.contains(f)));
            if let Some(site) = missing {
                return Err(Failure::Host {
                    message: format!(
                        "--dyndbg {:?}: {}:{} [{}]{} has flags ={} after boot, not {}",
                        query.text, site.file, site.line, site.module, site.function, site.flags, query.flags
                    ),
                });
            }
        }
        counts.push(selected.len());
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTROL_TEXT: &str = "# filename:lineno [module]function flags format\n\
        kmod/kthermal_inject.c:165 [kevent_thermal]kt_inject =p \"injection %llu: register %d of CPU%u is %#llx, interrupt raised\\n\"\n\
        kmod/kthermal_irq.c:410 [kevent_thermal]kt_thermal_interrupt =p \"CPU%d: interrupt %ld rate-limited, %lld ns inside the %u ms window\\n\"\n\
        kmod/kthermal_pci.c:158 [kevent_thermal]kt_pci_request_vector =_ \"vector %u is IRQ %d, CPU%u's thermal interrupt\\n\"\n\
        lib/kobject_uevent.c:200 [kobject_uevent]kobject_uevent_env =_ \"%s: uevent_suppress caused the event to drop!\\n\"\n";

    /// Sites of a class, as a DRM driver's look (none of the bench's kernels has any).
    /// A format's quotes are printed as they are, not escaped.
    const CLASSED: &str =
        "drivers/gpu/drm/drm_vblank.c:100 [drm]drm_vblank_enable =_ \"say \"on\" now\\n\" class:DRM_UT_VBL\n\
        drivers/gpu/drm/drm_vblank.c:200 [drm]drm_vblank_disable =p \"off\" class:NOT_A_CLASS\\n\"\n\
        drivers/gpu/drm/drm_print.c:300 [drm]drm_dbg =_ \"x\" class unknown, _id:7\n";

    #[test]
    fn queries_are_checked_for_their_form() {
        assert!(Query::parse("module kevent_thermal +p").is_ok());
        assert!(Query::parse("file kthermal_irq.c line 400-420 =pmf").is_ok());
        assert!(Query::parse("=_").is_ok());
        for (bad, why) in [
            ("", "empty"),
            ("module kevent_thermal", "not a flags operation"),
            ("module kevent_thermal +x", "not a flags operation"),
            ("module +p", "has no argument"),
            ("modul kevent_thermal +p", "not a keyword"),
            ("line x +p", "expected N, N-M"),
            ("func a func b +p", "given twice"),
            ("module a +p; module b +p", "one query per --dyndbg"),
            ("format \"a b\" +p", "\\040"),
        ] {
            let err = Query::parse(bad).unwrap_err();
            assert!(err.starts_with(&format!("--dyndbg {bad:?}: ")) && err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn a_query_reaches_the_module_it_names_or_the_kernel_and_every_module() {
        let q = Query::parse("module kevent-thermal func kt_inject +p").unwrap();
        assert_eq!(q.kernel_args(), ["kevent_thermal.dyndbg=\"func kt_inject +p\""]);
        let q = Query::parse("func  kt_*   +p").unwrap();
        assert_eq!(
            q.kernel_args(),
            ["dyndbg=\"func kt_* +p\"", "kmessage.dyndbg=\"func kt_* +p\"", "kevent_thermal.dyndbg=\"func kt_* +p\""]
        );
        let q = Query::parse("module kevent* +p").unwrap();
        assert_eq!(q.kernel_args(), ["dyndbg=\"module kevent* +p\"", "kevent_thermal.dyndbg=\"+p\""]);
        let q = Query::parse("module kobject_uevent +p").unwrap();
        assert_eq!(q.kernel_args(), ["dyndbg=\"module kobject_uevent +p\""]);
    }

    #[test]
    fn debug_messages_reach_the_console_unless_the_run_chose_its_level() {
        let q = vec![Query::parse("module kmessage +p").unwrap()];
        assert_eq!(kernel_args(&q, &[]), ["kmessage.dyndbg=\"+p\"", "loglevel=8"]);
        assert_eq!(kernel_args(&q, &["loglevel=4".to_owned()]), ["kmessage.dyndbg=\"+p\""]);
        assert!(kernel_args(&[], &[]).is_empty());
    }

    #[test]
    fn a_query_that_selects_no_call_site_is_refused() {
        let queries = |texts: &[&str]| texts.iter().map(|t| Query::parse(t).unwrap()).collect::<Vec<_>>();
        let counts =
            check(&queries(&["module kevent_thermal func kt_inject +p", "file kthermal_*.c +p"]), CONTROL_TEXT);
        assert!(matches!(counts, Err(Failure::Host { .. })), "kt_pci_request_vector did not get p: {counts:?}");
        assert_eq!(
            check(&queries(&["module kevent_thermal -p", "format ^CPU%d:\\040 =_"]), CONTROL_TEXT).unwrap(),
            [3, 1]
        );
        assert_eq!(
            check(&queries(&["file kmod/kthermal_irq.c:400-420 +p", "line 160-170 +p"]), CONTROL_TEXT).unwrap(),
            [1, 1]
        );
        let err = check(&queries(&["module kevent_thermal func kt_injekt +p"]), CONTROL_TEXT).unwrap_err();
        assert!(matches!(err, Failure::Refused { .. }));
        assert_eq!(
            err.to_string(),
            "--dyndbg \"module kevent_thermal func kt_injekt +p\": selects no pr_debug call site of the guest kernel \
             (/proc/dynamic_debug/control lists 4 sites in 2 modules; the events modules' are in kmessage and \
             kevent_thermal)"
        );
    }

    #[test]
    fn a_class_clause_selects_the_sites_of_that_class_only_and_none_selects_unclassed_ones() {
        let queries = |texts: &[&str]| texts.iter().map(|t| Query::parse(t).unwrap()).collect::<Vec<_>>();
        let control = format!("{CONTROL_TEXT}{CLASSED}");
        assert_eq!(check(&queries(&["class DRM_UT_VBL -p", "module drm -p"]), &control).unwrap(), [1, 1]);
        let err = check(&queries(&["module kevent_thermal class DRM_UT_VBL -p"]), &control).unwrap_err();
        assert!(
            err.to_string().ends_with("the classes of its sites: \"DRM_UT_VBL\", \"class unknown, _id:7\")"),
            "{err}"
        );
        let err = check(&queries(&["class DRM_UT_KMS +p"]), CONTROL_TEXT).unwrap_err();
        assert!(err.to_string().ends_with("; no site has a class)"), "{err}");
        let site = parse_site(CLASSED.lines().next().unwrap()).unwrap();
        assert_eq!((site.format.as_str(), site.class.as_deref()), ("say \"on\" now\n", Some("DRM_UT_VBL")));
        let site = parse_site(CLASSED.lines().nth(1).unwrap()).unwrap();
        assert_eq!((site.format.as_str(), site.class), ("off\" class:NOT_A_CLASS\n", None));
    }

    #[test]
    fn a_runs_appended_words_split_into_the_users_and_the_queries() {
        let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let queries = vec![Query::parse("module kmessage +p").unwrap()];
        let appended = words(&["initcall_debug", "kmessage.dyndbg=\"+p\"", "loglevel=8"]);
        assert_eq!(split_appended(&appended, &queries), Some(&appended[..1]));
        // --append chose the level: kernel_args added none.
        let appended = words(&["loglevel=4", "kmessage.dyndbg=\"+p\""]);
        assert_eq!(split_appended(&appended, &queries), Some(&appended[..1]));
        assert_eq!(split_appended(&appended, &[]), Some(&appended[..]));
        for bad in [&["kmessage.dyndbg=\"+p\""][..], &["loglevel=8"], &[], &["kmessage.dyndbg=\"-p\"", "loglevel=8"]] {
            assert_eq!(split_appended(&words(bad), &queries), None, "{bad:?}");
        }
    }

    #[test]
    fn control_lines_are_read_with_their_escapes() {
        let site = parse_site(CONTROL_TEXT.lines().nth(1).unwrap()).unwrap();
        assert_eq!(
            (site.file.as_str(), site.line, site.module.as_str()),
            ("kmod/kthermal_inject.c", 165, "kevent_thermal")
        );
        assert_eq!((site.function.as_str(), site.flags.as_str()), ("kt_inject", "p"));
        assert!(site.format.ends_with("interrupt raised\n"), "{:?}", site.format);
        assert_eq!(unescape("a\\040b\\n\\\\"), "a b\n\\");
    }
}
