//! `cemesh send --grpc ADDR`: publish through `cemesh.v1.Publisher` instead of HTTP.

use cemesh_ingress::grpc::GrpcPublisher;
use cemesh_proto::Event;

/// The broker named by `--to` when sending over gRPC: `NAMESPACE/BROKER`, or an
/// ingress URL whose path is `/NAMESPACE/BROKER` (so the same `--to` works for both).
pub fn parse_broker(to: &str) -> anyhow::Result<(String, String)> {
    let path = match to.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("", |i| &rest[i..]),
        None => to,
    };
    let path = path.trim_matches('/');
    match path.split('/').collect::<Vec<_>>()[..] {
        [ns, name] if !ns.is_empty() && !name.is_empty() => Ok((ns.to_owned(), name.to_owned())),
        _ => anyhow::bail!(
            "--to {to:?}: with --grpc, name the broker as NAMESPACE/BROKER \
             (or an ingress URL ending in /NAMESPACE/BROKER)"
        ),
    }
}

/// `cemesh send --grpc ADDR`: publishes `event` to the broker `to` names, prints the
/// outcome like the HTTP path does, and fails with the gRPC code and message.
pub async fn run(addr: &str, to: &str, event: &Event) -> anyhow::Result<()> {
    let (namespace, broker) = parse_broker(to)?;
    let mut publisher = GrpcPublisher::connect(addr).await?;
    match publisher.publish(&namespace, &broker, event).await {
        Ok(_) => {
            println!("OK (id {})", event.id);
            Ok(())
        }
        Err(status) => {
            let attribute = status
                .metadata()
                .get(cemesh_ingress::grpc::ATTRIBUTE_METADATA)
                .and_then(|v| v.to_str().ok())
                .map(|a| format!(" (attribute {a})"))
                .unwrap_or_default();
            anyhow::bail!("{:?}: {}{attribute}", status.code(), status.message())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_names() {
        let ok = |s: &str| parse_broker(s).unwrap();
        assert_eq!(ok("default/orders"), ("default".into(), "orders".into()));
        assert_eq!(ok("/default/orders/"), ("default".into(), "orders".into()));
        assert_eq!(
            ok("http://127.0.0.1:8080/default/orders"),
            ("default".into(), "orders".into())
        );
        for bad in ["orders", "a/b/c", "http://127.0.0.1:8080", "/x//"] {
            assert!(parse_broker(bad).is_err(), "{bad}");
        }
    }
}
