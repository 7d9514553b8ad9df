//! The inner side of the gateway: a TUN device carrying cleartext IP packets, and
//! kernel routes that send each tunnel's remote prefixes into it (and the
//! netlink link lookup the VIP mover shares).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::Context as _;
use futures::TryStreamExt as _;
use rtnetlink::packet_route::link::LinkMessage;
use rtnetlink::{LinkMessageBuilder, LinkUnspec, RouteMessageBuilder};
use tun_rs::{AsyncDevice, DeviceBuilder};

/// Creates (or opens) the TUN device, up, with the given MTU.
pub fn open(name: &str, mtu: u16) -> anyhow::Result<AsyncDevice> {
    DeviceBuilder::new()
        .name(name)
        .mtu(mtu)
        .build_async()
        .with_context(|| format!("cannot create TUN device {name} (needs CAP_NET_ADMIN)"))
}

/// A netlink handle (its connection running) and the link called `name`.
pub async fn link(name: &str) -> anyhow::Result<(rtnetlink::Handle, LinkMessage)> {
    let (connection, handle, _) =
        rtnetlink::new_connection().context("cannot open a netlink socket")?;
    tokio::spawn(connection);
    let link = handle
        .link()
        .get()
        .match_name(name.to_owned())
        .execute()
        .try_next()
        .await
        .with_context(|| format!("cannot look up link {name}"))?
        .with_context(|| format!("link {name} not found"))?;
    Ok((handle, link))
}

/// Routes inner prefixes into the TUN device through rtnetlink.
#[derive(Debug)]
pub struct Routes {
    handle: rtnetlink::Handle,
    ifindex: u32,
}

impl Routes {
    pub async fn new(tun_name: &str) -> anyhow::Result<Routes> {
        let (handle, link) = link(tun_name).await?;
        let ifindex = link.header.index;
        // tun-rs brings the device up; make sure even if it was pre-created down.
        handle
            .link()
            .set(
                LinkMessageBuilder::<LinkUnspec>::new()
                    .index(ifindex)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .with_context(|| format!("cannot set {tun_name} up"))?;
        Ok(Routes { handle, ifindex })
    }

    /// Adds (or replaces) a route for `prefix` into the TUN device. Replacing keeps
    /// a restart idempotent: a route left by a previous run is taken over.
    pub async fn add(&self, addr: IpAddr, len: u8) -> anyhow::Result<()> {
        self.handle
            .route()
            .add(self.message(addr, len))
            .replace()
            .execute()
            .await
            .with_context(|| format!("cannot add route {addr}/{len} into the TUN device"))
    }

    /// Removes the route for `prefix` (a tunnel removed, or its selectors
    /// changed).
    pub async fn remove(&self, addr: IpAddr, len: u8) -> anyhow::Result<()> {
        self.handle
            .route()
            .del(self.message(addr, len))
            .execute()
            .await
            .with_context(|| format!("cannot remove route {addr}/{len}"))
    }

    fn message(&self, addr: IpAddr, len: u8) -> rtnetlink::packet_route::route::RouteMessage {
        match addr {
            IpAddr::V4(a) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(a, len)
                .output_interface(self.ifindex)
                .build(),
            IpAddr::V6(a) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(a, len)
                .output_interface(self.ifindex)
                .build(),
        }
    }
}
