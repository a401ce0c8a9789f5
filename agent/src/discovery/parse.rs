//! Reading server configurations for the certificate files they name:
//! `nginx -T` output, Apache config files (as `-D DUMP_INCLUDES` lists
//! them) and HAProxy config files. Pure functions of the text, so they are
//! unit-tested without the servers.

use std::path::{Path, PathBuf};

// ------------------------------------------------------------ references

/// A certificate file a server config names, and where.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct CertRef {
    pub path: String,
    pub site: Option<String>,
}

/// A reference that cannot be followed (a variable, inline data).
pub(super) fn unfollowable(path: &str) -> Option<&'static str> {
    if path.contains('$') {
        Some("the path contains a variable, resolved per request; not followed")
    } else if path.starts_with("data:") {
        Some("inline certificate data (data:); not read")
    } else if path.starts_with("engine:") || path.starts_with("store:") {
        Some("certificate held by an engine or store; not read")
    } else {
        None
    }
}

fn join(base: &Path, p: &str) -> String {
    if p.starts_with('/') || unfollowable(p).is_some() {
        p.to_string()
    } else {
        base.join(p).display().to_string()
    }
}

// ------------------------------------------------------------ nginx

/// One lexical token of an nginx config.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Word(String),
    Open,
    Close,
    End,
}

fn nginx_tokens(text: &str) -> Vec<Tok> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    let mut word = String::new();
    let mut in_word = false;
    let flush = |word: &mut String, in_word: &mut bool, out: &mut Vec<Tok>| {
        if *in_word {
            out.push(Tok::Word(std::mem::take(word)));
            *in_word = false;
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '#' if !in_word => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '"' | '\'' if !in_word => {
                in_word = true;
                while let Some(q) = chars.next() {
                    if q == '\\' {
                        if let Some(n) = chars.next() {
                            word.push(n);
                        }
                    } else if q == c {
                        break;
                    } else {
                        word.push(q);
                    }
                }
                flush(&mut word, &mut in_word, &mut out);
            }
            '{' => {
                flush(&mut word, &mut in_word, &mut out);
                out.push(Tok::Open);
            }
            '}' => {
                flush(&mut word, &mut in_word, &mut out);
                out.push(Tok::Close);
            }
            ';' => {
                flush(&mut word, &mut in_word, &mut out);
                out.push(Tok::End);
            }
            c if c.is_whitespace() => flush(&mut word, &mut in_word, &mut out),
            '\\' => {
                in_word = true;
                if let Some(n) = chars.next() {
                    word.push(n);
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    flush(&mut word, &mut in_word, &mut out);
    out
}

/// The files of `nginx -T` output: `# configuration file PATH:` headers
/// followed by each file's text, the main file first.
pub fn nginx_dump_files(dump: &str) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = Vec::new();
    for line in dump.split_inclusive('\n') {
        let header = line
            .trim_end()
            .strip_prefix("# configuration file ")
            .and_then(|r| r.strip_suffix(':'));
        match header {
            Some(path) => files.push((path.to_string(), String::new())),
            None => {
                if let Some((_, text)) = files.last_mut() {
                    text.push_str(line);
                }
            }
        }
    }
    files
}

/// Most included files one dump is walked through, counting each
/// inclusion: `include` directives that match many files, or a file that
/// includes itself, would otherwise make the walk exponential in the depth.
const NGINX_MAX_INCLUSIONS: usize = 1024;

struct NginxWalk<'a> {
    files: &'a [(String, String)],
    conf_dir: PathBuf,
    refs: Vec<CertRef>,
    depth: usize,
    /// The files being included, outermost first: a file is not included
    /// inside itself.
    chain: Vec<&'a str>,
    /// Inclusions walked so far, at most [`NGINX_MAX_INCLUSIONS`].
    inclusions: usize,
}

#[derive(Default)]
struct NginxServer {
    names: Vec<String>,
    certs: Vec<String>,
}

impl NginxWalk<'_> {
    /// Walk `tokens`; `stack` holds the enclosing block names, `servers`
    /// the open `server` blocks (innermost last).
    fn walk(&mut self, tokens: &[Tok], stack: &mut Vec<String>, servers: &mut Vec<NginxServer>) {
        if self.depth > 32 {
            return;
        }
        let mut words: Vec<String> = Vec::new();
        for t in tokens {
            match t {
                Tok::Word(w) => words.push(w.clone()),
                Tok::Open => {
                    let name = words.first().cloned().unwrap_or_default();
                    if name == "server" {
                        servers.push(NginxServer::default());
                    }
                    stack.push(name);
                    words.clear();
                }
                Tok::Close => {
                    words.clear();
                    if stack.pop().as_deref() == Some("server") {
                        if let Some(s) = servers.pop() {
                            let site = (!s.names.is_empty()).then(|| s.names.join(" "));
                            for c in s.certs {
                                self.refs.push(CertRef {
                                    path: c,
                                    site: site.clone(),
                                });
                            }
                        }
                    }
                }
                Tok::End => {
                    let directive = std::mem::take(&mut words);
                    self.directive(&directive, stack, servers);
                }
            }
        }
    }

    fn directive(&mut self, d: &[String], stack: &[String], servers: &mut Vec<NginxServer>) {
        let Some((name, args)) = d.split_first() else {
            return;
        };
        let in_server = stack.last().map(String::as_str) == Some("server");
        match name.as_str() {
            "server_name" if in_server => {
                if let Some(s) = servers.last_mut() {
                    s.names.extend(
                        args.iter()
                            .filter(|a| !a.is_empty() && *a != "\"\"")
                            .cloned(),
                    );
                }
            }
            "ssl_certificate" => {
                let Some(path) = args.first() else { return };
                let path = join(&self.conf_dir, path);
                match servers.last_mut() {
                    Some(s) if in_server => s.certs.push(path),
                    _ => self.refs.push(CertRef {
                        path,
                        site: Some(format!(
                            "{} level (default for its servers)",
                            stack.last().map(String::as_str).unwrap_or("main")
                        )),
                    }),
                }
            }
            "include" => {
                let Some(pattern) = args.first() else { return };
                let pattern = join(&self.conf_dir, pattern);
                let Ok(p) = glob::Pattern::new(&pattern) else {
                    return;
                };
                let files = self.files;
                for (path, text) in files.iter().filter(|(f, _)| p.matches(f)) {
                    if self.chain.contains(&path.as_str())
                        || self.inclusions >= NGINX_MAX_INCLUSIONS
                    {
                        continue;
                    }
                    self.inclusions += 1;
                    let tokens = nginx_tokens(text);
                    self.depth += 1;
                    self.chain.push(path);
                    // An included file continues the current block.
                    let mut inner_stack = stack.to_vec();
                    self.walk(&tokens, &mut inner_stack, servers);
                    self.chain.pop();
                    self.depth -= 1;
                }
            }
            _ => {}
        }
    }
}

/// The certificates an `nginx -T` dump configures, with the
/// `server_name`s of their `server` blocks.
pub fn parse_nginx_dump(dump: &str) -> Vec<CertRef> {
    let files = nginx_dump_files(dump);
    let Some((main, text)) = files.first() else {
        return Vec::new();
    };
    let conf_dir = Path::new(main)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    let mut walk = NginxWalk {
        files: &files,
        conf_dir,
        refs: Vec::new(),
        depth: 0,
        chain: vec![main.as_str()],
        inclusions: 0,
    };
    let tokens = nginx_tokens(text);
    walk.walk(&tokens, &mut Vec::new(), &mut Vec::new());
    let mut refs = walk.refs;
    refs.sort();
    refs.dedup();
    refs
}

// ------------------------------------------------------------ Apache

/// The files listed by `apache2 -t -D DUMP_INCLUDES`, main config first.
pub fn parse_apache_includes(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| {
            let l = l.trim();
            let rest = l.strip_prefix('(')?;
            let (_, path) = rest.split_once(") ")?;
            let path = path.trim();
            path.starts_with('/').then(|| path.to_string())
        })
        .collect()
}

/// Split an Apache directive line into words, honouring quotes.
fn apache_words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut w = String::new();
        if c == '"' || c == '\'' {
            chars.next();
            for q in chars.by_ref() {
                if q == c {
                    break;
                }
                w.push(q);
            }
        } else {
            while let Some(&n) = chars.peek() {
                if n.is_whitespace() {
                    break;
                }
                w.push(n);
                chars.next();
            }
        }
        out.push(w);
    }
    out
}

/// `ServerRoot` of an Apache main config, if it sets one.
pub fn apache_server_root(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let w = apache_words(l.trim());
        (w.len() >= 2 && w[0].eq_ignore_ascii_case("ServerRoot")).then(|| w[1].clone())
    })
}

/// The certificates one Apache config file configures: each
/// `SSLCertificateFile`, with the `ServerName`/`ServerAlias` (or address)
/// of its `<VirtualHost>`. `SSLCertificateChainFile` is left out: it holds
/// the intermediates of the certificate beside it, not a certificate of
/// its own.
pub fn parse_apache_config(text: &str, server_root: &Path) -> Vec<CertRef> {
    let mut refs = Vec::new();
    // (address, names, certs) of the open <VirtualHost>.
    let mut vhost: Option<(String, Vec<String>, Vec<String>)> = None;
    let mut logical = String::new();
    for raw in text.lines() {
        let line = raw.trim();
        if let Some(cont) = line.strip_suffix('\\') {
            logical.push_str(cont);
            logical.push(' ');
            continue;
        }
        logical.push_str(line);
        let line = std::mem::take(&mut logical);
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(tag) = line.strip_prefix('<') {
            let tag = tag.trim_end_matches('>');
            let words = apache_words(tag);
            let Some(name) = words.first() else { continue };
            if name.eq_ignore_ascii_case("VirtualHost") {
                vhost = Some((words[1..].join(" "), Vec::new(), Vec::new()));
            } else if name.eq_ignore_ascii_case("/VirtualHost") {
                if let Some((addr, names, certs)) = vhost.take() {
                    let site = if names.is_empty() {
                        addr
                    } else {
                        names.join(" ")
                    };
                    for c in certs {
                        refs.push(CertRef {
                            path: c,
                            site: Some(site.clone()),
                        });
                    }
                }
            }
            continue;
        }
        let words = apache_words(line);
        let Some((name, args)) = words.split_first() else {
            continue;
        };
        let name = name.to_ascii_lowercase();
        match name.as_str() {
            "servername" | "serveralias" => {
                if let Some((_, names, _)) = vhost.as_mut() {
                    let mut args = args.to_vec();
                    if name == "servername" {
                        // ServerName [scheme://]host[:port]
                        args.truncate(1);
                        args = args
                            .into_iter()
                            .map(|a| {
                                let a = a.rsplit("://").next().unwrap_or_default().to_string();
                                a.split(':').next().unwrap_or_default().to_string()
                            })
                            .collect();
                    }
                    names.extend(args);
                }
            }
            "sslcertificatefile" => {
                let Some(path) = args.first() else { continue };
                let path = join(server_root, path);
                match vhost.as_mut() {
                    Some((_, _, certs)) => certs.push(path),
                    None => refs.push(CertRef {
                        path,
                        site: Some("main server".into()),
                    }),
                }
            }
            _ => {}
        }
    }
    refs
}

// ------------------------------------------------------------ HAProxy

/// What an HAProxy config names: certificate files or directories
/// (`crt`), and `crt-list` files, with the frontend (or `listen`) name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaproxyRefs {
    pub crt: Vec<CertRef>,
    pub crt_lists: Vec<CertRef>,
}

/// Parse an HAProxy config: `crt-base` in `global`, `bind … crt PATH` and
/// `crt-list FILE` in `frontend`/`listen` sections.
pub fn parse_haproxy_config(text: &str, config_dir: &Path) -> HaproxyRefs {
    const SECTIONS: &[&str] = &[
        "global",
        "defaults",
        "frontend",
        "backend",
        "listen",
        "peers",
        "resolvers",
        "userlist",
        "program",
        "mailers",
        "http-errors",
        "ring",
        "cache",
    ];
    let mut crt_base: Option<String> = None;
    let mut section: Option<String> = None;
    let mut out = HaproxyRefs {
        crt: Vec::new(),
        crt_lists: Vec::new(),
    };
    let mut pending = Vec::new();
    for raw in text.lines() {
        let line = match raw.find('#') {
            // `#` starts a comment unless escaped or quoted; certificate
            // paths with `#` are rare enough to ignore.
            Some(i) => &raw[..i],
            None => raw,
        };
        let words = apache_words(line.trim());
        let Some((kw, args)) = words.split_first() else {
            continue;
        };
        if SECTIONS.contains(&kw.as_str()) {
            section = args.first().cloned().or_else(|| Some(kw.clone()));
            if kw != "frontend" && kw != "listen" {
                section = None;
            }
            if kw == "global" {
                section = Some("\0global".into());
            }
            continue;
        }
        if section.as_deref() == Some("\0global") && kw == "crt-base" {
            crt_base = args.first().cloned();
            continue;
        }
        if kw != "bind" {
            continue;
        }
        let site = section.clone().filter(|s| !s.starts_with('\0'));
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if a == "crt" || a == "crt-list" {
                if let Some(p) = it.next() {
                    pending.push((a.clone(), p.clone(), site.clone()));
                }
            }
        }
    }
    for (kind, p, site) in pending {
        let base = crt_base
            .as_deref()
            .map(|b| join(config_dir, b))
            .map(PathBuf::from)
            .unwrap_or_else(|| config_dir.to_path_buf());
        let r = CertRef {
            path: join(&base, &p),
            site,
        };
        if kind == "crt" {
            out.crt.push(r);
        } else {
            out.crt_lists.push(r);
        }
    }
    out
}

/// The certificate paths of a `crt-list` file: the first word of each line.
pub fn parse_crt_list(text: &str, base: &Path) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| apache_words(l).into_iter().next())
        .map(|p| join(base, &p))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NGINX_DUMP: &str = "\
# configuration file /etc/nginx/nginx.conf:
user www-data;
events { worker_connections 64; }
http {
    ssl_certificate /etc/ssl/default.pem; # http-level default
    include /etc/nginx/sites-enabled/*;
    server {
        listen 443 ssl;
        server_name a.example.test www.a.example.test;
        ssl_certificate \"/etc/ssl/a b.pem\";
        ssl_certificate_key /etc/ssl/a.key;
        location / { return 200; }
    }
}

# configuration file /etc/nginx/sites-enabled/b:
server {
    server_name b.example.test;
    include snippets/ssl.conf;
    ssl_certificate $ssl_server_name.pem;
}

# configuration file /etc/nginx/snippets/ssl.conf:
ssl_certificate tls/b.pem;
";

    #[test]
    fn nginx_dump_finds_certificates_with_their_servers() {
        let refs = parse_nginx_dump(NGINX_DUMP);
        let find = |p: &str| refs.iter().find(|r| r.path == p).cloned();
        assert_eq!(
            find("/etc/ssl/a b.pem").unwrap().site.as_deref(),
            Some("a.example.test www.a.example.test")
        );
        // Included inside a server block: that server's names; relative
        // paths resolve against the main config's directory.
        assert_eq!(
            find("/etc/nginx/tls/b.pem").unwrap().site.as_deref(),
            Some("b.example.test")
        );
        assert!(find("/etc/ssl/default.pem")
            .unwrap()
            .site
            .unwrap()
            .contains("http level"));
        assert!(find("$ssl_server_name.pem").is_some());
        assert!(!refs.iter().any(|r| r.path.contains(".key")));
        assert_eq!(refs.len(), 4, "{refs:?}");
    }

    #[test]
    fn nginx_includes_of_everything_stay_bounded() {
        // Found by fuzzing (docs/fuzzing.md): files that include every
        // file, themselves included, took exponential time.
        let mut dump = String::from(
            "# configuration file /etc/nginx/nginx.conf:\nhttp { include *; include *; }\n",
        );
        for i in 0..6 {
            dump.push_str(&format!(
                "# configuration file /etc/nginx/{i}.conf:\n\
                 include *; include *;\nserver {{ server_name s{i}.test; ssl_certificate /c/{i}.pem; }}\n"
            ));
        }
        let refs = parse_nginx_dump(&dump);
        assert_eq!(refs.len(), 6, "{refs:?}");
        assert!(refs.iter().any(|r| r.path == "/c/5.pem"));
    }

    #[test]
    fn nginx_dump_of_nothing_is_empty() {
        assert!(parse_nginx_dump("").is_empty());
        assert!(parse_nginx_dump("garbage { { ;; }").is_empty());
    }

    #[test]
    fn apache_includes_and_vhosts() {
        let out = "Included configuration files:\n  (*) /srv/apache/httpd.conf\n    (10) /srv/apache/sites/a.conf\n";
        assert_eq!(
            parse_apache_includes(out),
            vec!["/srv/apache/httpd.conf", "/srv/apache/sites/a.conf"]
        );
        let conf = "\
ServerRoot \"/srv/apache\"
SSLCertificateFile /etc/ssl/main.pem
<IfModule ssl_module>
<VirtualHost 127.0.0.1:443 [::1]:443>
    ServerName https://a.example.test:443
    ServerAlias www.a.example.test \\
        old.a.example.test
    sslcertificatefile tls/a.pem
    SSLCertificateChainFile \"/etc/ssl/chain a.pem\"
    SSLCertificateKeyFile tls/a.key
</VirtualHost>
<VirtualHost *:8443>
    # SSLCertificateFile /commented/out.pem
    SSLCertificateFile /etc/ssl/noname.pem
</VirtualHost>
</IfModule>
";
        assert_eq!(apache_server_root(conf).as_deref(), Some("/srv/apache"));
        let refs = parse_apache_config(conf, Path::new("/srv/apache"));
        let site = |p: &str| {
            refs.iter()
                .find(|r| r.path == p)
                .and_then(|r| r.site.clone())
        };
        assert_eq!(site("/etc/ssl/main.pem").as_deref(), Some("main server"));
        assert_eq!(
            site("/srv/apache/tls/a.pem").as_deref(),
            Some("a.example.test www.a.example.test old.a.example.test")
        );
        assert!(
            refs.iter().all(|r| r.path != "/etc/ssl/chain a.pem"),
            "the chain file is listed as a certificate: {refs:?}"
        );
        assert_eq!(site("/etc/ssl/noname.pem").as_deref(), Some("*:8443"));
        assert_eq!(refs.len(), 3, "{refs:?}");
    }

    #[test]
    fn haproxy_bind_crt_lines() {
        let cfg = "\
global
    crt-base /etc/haproxy/certs
    log stdout format raw local0
defaults
    mode http
frontend fe_https
    bind 127.0.0.1:8443 ssl crt site.pem crt /abs/other.pem alpn h2
    bind :9443 ssl crt-list lists/crt.list # comment crt /not/this.pem
    default_backend be
backend be
    server s1 127.0.0.1:8080 crt /client/cert.pem
listen admin
    bind :7443 ssl crt dir/
";
        let refs = parse_haproxy_config(cfg, Path::new("/etc/haproxy"));
        let crt: Vec<(String, Option<String>)> = refs
            .crt
            .iter()
            .map(|r| (r.path.clone(), r.site.clone()))
            .collect();
        assert_eq!(
            crt,
            vec![
                (
                    "/etc/haproxy/certs/site.pem".into(),
                    Some("fe_https".into())
                ),
                ("/abs/other.pem".into(), Some("fe_https".into())),
                ("/etc/haproxy/certs/dir/".into(), Some("admin".into())),
            ]
        );
        assert_eq!(refs.crt_lists[0].path, "/etc/haproxy/certs/lists/crt.list");
        assert_eq!(
            parse_crt_list(
                "# c\n/a.pem [alpn h2] a.test\nb.pem\n\n",
                Path::new("/base")
            ),
            vec!["/a.pem", "/base/b.pem"]
        );
    }
}
