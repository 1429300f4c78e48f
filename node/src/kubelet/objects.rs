//! The API objects volumes read ([`VolumeObjects`]), over `api::client`; and the runtime's
//! exec for exec probes ([`ExecProber`]) once the runtime has one.

use api::client::{Api, Client, ClientError};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolume, PersistentVolumeClaim, Secret, ServiceAccount,
};
use serde_json::json;

use crate::volumes::{VolumeError, VolumeObjects};

/// [`VolumeObjects`] through the apiserver (nothing exists without one).
#[derive(Debug, Clone)]
pub(crate) struct ApiObjects {
    pub(crate) client: Option<Client>,
}

fn api_err(e: ClientError) -> VolumeError {
    VolumeError::Api(e.to_string())
}

impl ApiObjects {
    async fn get_ns<K: api::client::ApiObject + k8s_openapi::Resource>(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Option<K>, VolumeError> {
        let Some(c) = &self.client else {
            return Err(VolumeError::Api("no apiserver configured".into()));
        };
        Api::<K>::namespaced(c.clone(), ns)
            .get_opt(name)
            .await
            .map_err(api_err)
    }
}

#[async_trait::async_trait]
impl VolumeObjects for ApiObjects {
    async fn config_map(&self, ns: &str, name: &str) -> Result<Option<ConfigMap>, VolumeError> {
        self.get_ns(ns, name).await
    }

    async fn secret(&self, ns: &str, name: &str) -> Result<Option<Secret>, VolumeError> {
        self.get_ns(ns, name).await
    }

    async fn persistent_volume_claim(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Option<PersistentVolumeClaim>, VolumeError> {
        self.get_ns(ns, name).await
    }

    async fn persistent_volume(&self, name: &str) -> Result<Option<PersistentVolume>, VolumeError> {
        let Some(c) = &self.client else {
            return Err(VolumeError::Api("no apiserver configured".into()));
        };
        Api::<PersistentVolume>::all(c.clone())
            .get_opt(name)
            .await
            .map_err(api_err)
    }

    async fn service_account_token(
        &self,
        ns: &str,
        sa: &str,
        audiences: &[String],
        expiration_secs: i64,
    ) -> Result<String, VolumeError> {
        let Some(c) = &self.client else {
            return Err(VolumeError::Api("no apiserver configured".into()));
        };
        let req: TokenRequest = serde_json::from_value(json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"audiences": audiences, "expirationSeconds": expiration_secs}
        }))
        .map_err(|e| VolumeError::Token(e.to_string()))?;
        let api: Api<ServiceAccount> = Api::namespaced(c.clone(), ns);
        let resp: TokenRequest = api
            .create_subresource(sa, "token", &req)
            .await
            .map_err(|e| VolumeError::Token(format!("TokenRequest for {ns}/{sa}: {e}")))?;
        resp.status
            .map(|s| s.token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                VolumeError::Token(format!(
                    "TokenRequest for {ns}/{sa}: no token in the answer"
                ))
            })
    }
}
