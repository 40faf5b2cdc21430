//! The hand-written prost messages follow `proto/mint.proto`: the same messages, fields,
//! field numbers and wire types (what protoc-generated code would have).
#![allow(missing_docs)]

use std::collections::BTreeMap;

use dreamnet_grpc_server::mint::{MintReply, MintRequest};
use prost::Message;

/// (message, field) -> (type, number), read from the .proto.
fn proto_fields() -> BTreeMap<(String, String), (String, u32)> {
    let proto = include_str!("../proto/mint.proto");
    let mut fields = BTreeMap::new();
    let mut message = None;
    for line in proto.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("message ") {
            message = rest.split_whitespace().next().map(str::to_owned);
        } else if line == "}" {
            message = None;
        } else if let (Some(message), Some((decl, number))) = (&message, line.split_once(" = ")) {
            let mut words = decl.split_whitespace();
            let (ty, name) = (words.next().unwrap(), words.next().unwrap());
            let number = number.trim_end_matches(';').parse().unwrap();
            fields.insert((message.clone(), name.to_owned()), (ty.to_owned(), number));
        }
    }
    fields
}

#[test]
fn every_field_has_the_proto_number_and_wire_type() {
    let x = || "x".to_owned();
    let encoded: BTreeMap<(String, String), Vec<u8>> = [
        (
            "MintRequest",
            "name",
            MintRequest { name: x() }.encode_to_vec(),
        ),
        (
            "MintReply",
            "token_id",
            MintReply {
                token_id: x(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "MintReply",
            "name",
            MintReply {
                name: x(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "MintReply",
            "action_id",
            MintReply {
                action_id: x(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "MintReply",
            "amount",
            MintReply {
                amount: 7,
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "MintReply",
            "currency",
            MintReply {
                currency: x(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
    ]
    .into_iter()
    .map(|(message, field, bytes)| ((message.to_owned(), field.to_owned()), bytes))
    .collect();
    let proto = proto_fields();
    assert_eq!(
        proto.keys().collect::<Vec<_>>(),
        encoded.keys().collect::<Vec<_>>(),
        "the same messages and fields"
    );
    for (field, (ty, number)) in &proto {
        let wire_type = match ty.as_str() {
            "string" | "bytes" => 2,
            "int64" | "int32" | "bool" => 0,
            other => panic!("type {other} not covered"),
        };
        assert_eq!(
            u32::from(encoded[field][0]),
            (number << 3) | wire_type,
            "{field:?}"
        );
    }
}
