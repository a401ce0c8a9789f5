//! The seed corpora: real messages, configs and certificates, one file per
//! seed in `corpus/<target>/`.
//!
//! Wire seeds are encoded `Request`s (one per variant, sent by the role
//! that may send it, plus an enrollment carrying a real CSR), `Response`s
//! (one per variant), the hello and command messages, and frames of them.
//! Text seeds are the agent configs shipped in `packaging/` and the server
//! configs of the discovery tests (agent/src/discovery/parse.rs) and the
//! end-to-end tests (tests/src/servers.rs). PEM seeds are CSRs made by the
//! agent's and the CLI's own key generation and a certificate bundle (root,
//! intermediate, leaf for [`crate::pem::DOMAIN`] valid at
//! [`crate::pem::NOW`], and its key).
//!
//! Regenerate with
//! `CERTFLEET_BLESS=1 cargo nextest run -p certfleet-fuzz seeds_are_committed`.
//! Key generation is random, so PEM seeds differ on each regeneration; the
//! test without `CERTFLEET_BLESS` checks that every seed is present.

use certfleet_protocol::frame::{self, DEFAULT_MAX_FRAME};
use certfleet_protocol::limits::{self, Caller};
use certfleet_protocol::message::{
    AgentCommand, AgentCommandReply, Hello, HelloReply, Poke, Request, Response,
};
use certfleet_protocol::{sample, Secret, PROTOCOL};
use serde::Serialize;

/// One seed file: its target, its file name and its bytes.
#[derive(Debug, Clone)]
pub struct Seed {
    pub target: &'static str,
    pub name: String,
    pub bytes: Vec<u8>,
}

fn seed(target: &'static str, name: impl Into<String>, bytes: Vec<u8>) -> Seed {
    Seed {
        target,
        name: name.into(),
        bytes,
    }
}

fn body<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("seed messages encode")
}

fn with_pick(pick: u8, bytes: Vec<u8>) -> Vec<u8> {
    let mut out = vec![pick];
    out.extend(bytes);
    out
}

/// Input for `sample::arbitrary` that draws variant `index` of an enum and
/// fills its fields from a fixed pattern.
fn draw(index: usize) -> Vec<u8> {
    let mut data = (index as u32).to_le_bytes().to_vec();
    data.extend((0..48u8).map(|i| i.wrapping_mul(37).wrapping_add(index as u8)));
    data
}

fn caller_pick(caller: Caller) -> u8 {
    match caller {
        Caller::Enrolling => 0,
        Caller::Agent => 1,
        Caller::Admin => 2,
    }
}

/// Every seed, generated.
pub fn all() -> Vec<Seed> {
    let mut out = Vec::new();
    wire(&mut out);
    text(&mut out);
    pem(&mut out);
    out
}

fn wire(out: &mut Vec<Seed>) {
    let csr = certfleet_agent::identity::new_key_and_csr("web1")
        .expect("agent key and CSR")
        .1;
    let enroll = Request::Enroll {
        token: Secret::new(b"cfjt1.tok_0123456789abcdef.secret".to_vec()),
        csr_pem: csr,
        hostname: "web1".into(),
    };
    out.push(seed(
        "request",
        "enroll-real-csr",
        with_pick(0, body(&enroll)),
    ));
    out.push(seed(
        "frame",
        "enroll",
        frame::encode(&enroll, DEFAULT_MAX_FRAME).unwrap(),
    ));

    let names = limits::request_variants();
    for (i, name) in names.iter().enumerate() {
        let Some(r) = sample::arbitrary::<Request>(&draw(i)) else {
            continue;
        };
        let class = limits::classify(i as u32).expect("every variant is classified");
        let pick = caller_pick(class.caller);
        out.push(seed(
            "request",
            format!("{i:02}-{name}"),
            with_pick(pick, body(&r)),
        ));
        out.push(seed(
            "structured",
            format!("request-{i:02}-{name}"),
            with_pick(0, draw(i)),
        ));
        if i % 8 == 0 {
            out.push(seed(
                "frame",
                format!("request-{name}"),
                frame::encode(&r, DEFAULT_MAX_FRAME).unwrap(),
            ));
        }
    }
    for i in 0..64 {
        let Some(r) = sample::arbitrary::<Response>(&draw(i)) else {
            continue;
        };
        let tag = body(&r)[0];
        if usize::from(tag) != i {
            break; // past the last variant
        }
        out.push(seed(
            "message",
            format!("response-{i:02}"),
            with_pick(3, body(&r)),
        ));
        out.push(seed(
            "structured",
            format!("response-{i:02}"),
            with_pick(1, draw(i)),
        ));
        if i % 8 == 0 {
            out.push(seed(
                "frame",
                format!("response-{i:02}"),
                frame::encode(&r, DEFAULT_MAX_FRAME).unwrap(),
            ));
        }
    }

    let hello = Hello {
        versions: PROTOCOL,
        software: "certfleet-agent 0.1.0".into(),
    };
    out.push(seed("message", "hello", with_pick(0, body(&hello))));
    let reply = AgentCommandReply {
        files: 2,
        error: Some("webroot /var/www/html is not writable".into()),
    };
    out.push(seed("message", "command-reply", with_pick(1, body(&reply))));
    let accepted = HelloReply::Accepted {
        version: 0,
        controller: "certfleet 0.1.0".into(),
    };
    out.push(seed(
        "message",
        "hello-reply",
        with_pick(2, body(&accepted)),
    ));
    out.push(seed(
        "frame",
        "hello-reply",
        frame::encode(&accepted, DEFAULT_MAX_FRAME).unwrap(),
    ));
    let commands = [
        AgentCommand::PublishChallenge {
            domain: "a.example.test".into(),
            token: "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0".into(),
            key_authorization: Secret::new(
                b"LoqXcYV8q5ONbJQx.9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI".to_vec(),
            ),
        },
        AgentCommand::RemoveChallenge {
            domain: "a.example.test".into(),
            token: "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0".into(),
        },
        AgentCommand::Discover,
    ];
    for (i, c) in commands.iter().enumerate() {
        out.push(seed(
            "message",
            format!("command-{i}"),
            with_pick(4, body(c)),
        ));
    }
    out.push(seed(
        "message",
        "poke",
        with_pick(5, body(&Poke::DesiredStateChanged)),
    ));
}

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

const APACHE_CONF: &str = "\
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

const APACHE_INCLUDES: &str = "Included configuration files:\n  (*) /srv/apache/httpd.conf\n    (10) /srv/apache/sites/a.conf\n";

const HAPROXY_CFG: &str = "\
global
    crt-base /etc/haproxy/certs
    log stdout format raw local0
    stats socket /run/haproxy/admin.sock mode 600 level admin
defaults
    mode http
    timeout connect 5s
frontend fe_https
    bind 127.0.0.1:8443 ssl crt site.pem crt /abs/other.pem alpn h2
    bind :9443 ssl crt-list lists/crt.list # comment crt /not/this.pem
    default_backend be
backend be
    server s1 127.0.0.1:8080 crt /client/cert.pem
listen admin
    bind :7443 ssl crt dir/
";

const CRT_LIST: &str = "# c\n/a.pem [alpn h2] a.test\nb.pem\n\n";

fn text(out: &mut Vec<Seed>) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for file in ["agent.toml", "agent-nginx.toml"] {
        let bytes = std::fs::read(root.join("packaging").join(file)).expect("packaging config");
        out.push(seed("agent_config", file, bytes));
    }
    out.push(seed("nginx", "dump", NGINX_DUMP.into()));
    out.push(seed("apache", "vhosts", APACHE_CONF.into()));
    out.push(seed("apache", "includes", APACHE_INCLUDES.into()));
    out.push(seed("haproxy", "frontends", HAPROXY_CFG.into()));
    out.push(seed("haproxy", "crt-list", CRT_LIST.into()));
}

fn pem(out: &mut Vec<Seed>) {
    let (_, agent_csr) = certfleet_agent::identity::new_key_and_csr("web1").expect("agent CSR");
    out.push(seed("csr", "agent-enroll", agent_csr.into_bytes()));
    let (_, admin_csr) = certfleet_controller::client::Credential::new_key().expect("admin CSR");
    out.push(seed("csr", "admin-credential", admin_csr.into_bytes()));
    out.push(seed("certificate", "bundle", bundle()));
}

/// Root → intermediate → leaf for [`crate::pem::DOMAIN`], valid at
/// [`crate::pem::NOW`], with the leaf's key; parts separated by
/// [`crate::pem::SEPARATOR`].
fn bundle() -> Vec<u8> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose};
    let at = |secs: i64| time::OffsetDateTime::from_unix_timestamp(secs).unwrap();
    let now = crate::pem::NOW;
    let ca_params = |name: &str| {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, name.to_string());
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.not_before = at(now - 86_400 * 30);
        p.not_after = at(now + 86_400 * 365);
        p
    };
    let root_key = KeyPair::generate().unwrap();
    let root_params = ca_params("certfleet fuzz root");
    let root = root_params.self_signed(&root_key).unwrap();
    let root_issuer = rcgen::Issuer::new(root_params, &root_key);
    let mid_key = KeyPair::generate().unwrap();
    let mid_params = ca_params("certfleet fuzz intermediate");
    let mid = mid_params.signed_by(&mid_key, &root_issuer).unwrap();
    let mid_issuer = rcgen::Issuer::new(mid_params, &mid_key);
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf_params = CertificateParams::new(vec![crate::pem::DOMAIN.to_string()]).unwrap();
    leaf_params.not_before = at(now - 86_400);
    leaf_params.not_after = at(now + 86_400 * 90);
    leaf_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = leaf_params.signed_by(&leaf_key, &mid_issuer).unwrap();
    let sep = char::from(crate::pem::SEPARATOR).to_string();
    [leaf.pem(), mid.pem(), root.pem(), leaf_key.serialize_pem()]
        .join(&sep)
        .into_bytes()
}
