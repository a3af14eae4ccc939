//! ClickHouse server adapter over HTTP: the production warehouse. Statements
//! travel in the `query` parameter with `param_<name>` values (server-side
//! binding) and settings as URL parameters; data in the request body.

use reqwest::Url;

use super::WarehouseError;

#[derive(Clone)]
pub struct Server {
    client: reqwest::Client,
    base: Url,
    user: Option<(String, String)>,
}

impl Server {
    pub fn new(url: &str) -> Result<Server, WarehouseError> {
        let mut base = Url::parse(url).map_err(|e| WarehouseError::Config(format!("clickhouse url: {e}")))?;
        let user = (!base.username().is_empty()).then(|| (base.username().to_owned(), base.password().unwrap_or("").to_owned()));
        let _ = base.set_username("");
        let _ = base.set_password(None);
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(300))
            .build()
            .map_err(|e| WarehouseError::Config(e.to_string()))?;
        Ok(Server { client, base, user })
    }

    async fn send(&self, url: Url, body: impl Into<reqwest::Body>) -> Result<Vec<u8>, WarehouseError> {
        let mut req = self.client.post(url).body(body);
        if let Some((u, p)) = &self.user {
            req = req.basic_auth(u, Some(p));
        }
        let resp = req.send().await.map_err(|e| WarehouseError::Unavailable(format!("clickhouse server: {e}")))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| WarehouseError::Unavailable(e.to_string()))?;
        if status.is_success() {
            Ok(bytes.to_vec())
        } else {
            let msg = String::from_utf8_lossy(&bytes).into_owned();
            Err(if status.is_server_error() && !msg.contains("Code:") {
                WarehouseError::Unavailable(msg)
            } else {
                WarehouseError::classify(msg)
            })
        }
    }

    pub async fn query(&self, sql: &str, format: &str, params: &[(&str, String)]) -> Result<Vec<u8>, WarehouseError> {
        let mut url = self.base.clone();
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("default_format", format);
            for (n, v) in params {
                q.append_pair(&format!("param_{n}"), v);
            }
        }
        self.send(url, sql.as_bytes().to_vec()).await
    }

    pub async fn insert(&self, table: &str, format: &str, data: std::sync::Arc<Vec<u8>>, settings: &[(&str, String)]) -> Result<(), WarehouseError> {
        let mut url = self.base.clone();
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("query", &format!("INSERT INTO {table} FORMAT {format}"));
            for (k, v) in settings {
                q.append_pair(k, v);
            }
        }
        self.send(url, bytes::Bytes::from_owner(Shared(data))).await.map(|_| ())
    }
}

/// Rows shared with the caller, sent as the request body without a copy.
struct Shared(std::sync::Arc<Vec<u8>>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}
