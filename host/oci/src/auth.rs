//! Registry credentials from Docker's `config.json` format: the user's
//! `~/.docker/config.json` for the CLI, and `kubernetes.io/dockerconfigjson` Secrets
//! (the same JSON) for WasmFilters.

use std::path::PathBuf;

use base64::Engine;
use serde::Deserialize;

use crate::RegistryAuth;

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: std::collections::BTreeMap<String, Entry>,
}

#[derive(Deserialize)]
struct Entry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default, rename = "registrytoken")]
    registry_token: Option<String>,
}

/// The host (and port) an `auths` key names: `https://index.docker.io/v1/` and
/// `index.docker.io` are the same registry, as Docker treats them.
pub fn registry_key(s: &str) -> String {
    let s = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s);
    let host = s.split('/').next().unwrap_or(s).to_ascii_lowercase();
    match host.as_str() {
        "docker.io" | "registry-1.docker.io" | "index.docker.io" => "docker.io".into(),
        _ => host,
    }
}

/// The credentials `json` (Docker's config.json format) holds for `registry`, or
/// `None` when it has none. Errors name what is wrong with the JSON.
pub fn auth_from_docker_config(
    json: &[u8],
    registry: &str,
) -> Result<Option<RegistryAuth>, String> {
    let cfg: DockerConfig =
        serde_json::from_slice(json).map_err(|e| format!("not Docker config JSON: {e}"))?;
    let want = registry_key(registry);
    let Some((key, e)) = cfg.auths.iter().find(|(k, _)| registry_key(k) == want) else {
        return Ok(None);
    };
    if let Some(t) = &e.registry_token {
        return Ok(Some(RegistryAuth::Bearer(t.clone())));
    }
    if let (Some(u), Some(p)) = (&e.username, &e.password) {
        return Ok(Some(RegistryAuth::Basic(u.clone(), p.clone())));
    }
    let Some(b64) = &e.auth else {
        return Err(format!(
            "auths.{key}: has neither auth nor username and password"
        ));
    };
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| format!("auths.{key}.auth: not base64: {e}"))?;
    let text = String::from_utf8(raw).map_err(|_| format!("auths.{key}.auth: not UTF-8"))?;
    let (u, p) = text
        .split_once(':')
        .ok_or_else(|| format!("auths.{key}.auth: must encode user:password"))?;
    Ok(Some(RegistryAuth::Basic(u.to_string(), p.to_string())))
}

/// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub fn docker_config_path() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(d).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker").join("config.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_entries() {
        let json = br#"{"auths": {
            "https://index.docker.io/v1/": {"auth": "dTpw"},
            "127.0.0.1:5000": {"username": "alice", "password": "s3cret"},
            "bad.io": {}
        }}"#;
        let basic = |u: &str, p: &str| Some(RegistryAuth::Basic(u.into(), p.into()));
        let get = |r| auth_from_docker_config(json, r);
        assert!(
            matches!(get("docker.io"), Ok(a) if format!("{a:?}") == format!("{:?}", basic("u", "p")))
        );
        assert!(
            matches!(get("127.0.0.1:5000"), Ok(a) if format!("{a:?}") == format!("{:?}", basic("alice", "s3cret")))
        );
        assert!(matches!(get("ghcr.io"), Ok(None)));
        assert!(get("bad.io").unwrap_err().contains("auths.bad.io"));
        assert!(
            auth_from_docker_config(br#"{"auths": 1}"#, "x")
                .unwrap_err()
                .contains("Docker config")
        );
    }
}
