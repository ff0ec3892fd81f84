//! Emits the generator as two ONNX graphs (opset 13): `encoder.onnx`, run once per request,
//! and `decoder.onnx`, run once per slot. The graphs come from the same
//! [`Weights::encode`]/[`Weights::step`] code as the reference forward pass.

use std::collections::HashSet;

use prost::Message;
use tract_onnx::pb::{
    tensor_proto::DataType, tensor_shape_proto::dimension::Value as DimValue,
    tensor_shape_proto::Dimension, type_proto, AttributeProto, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

use super::{EncoderInputs, Folded, Ops, Param, Weights};
use crate::contract::roles as role;
use crate::contract::FeatureSchema;

const OPSET: i64 = 13;
const IR_VERSION: i64 = 8;
/// Symbolic dimension of the candidate count.
const N: &str = "N";

/// Serialised ONNX models of the generator.
pub struct ExportedGraphs {
    pub encoder: Vec<u8>,
    pub decoder: Vec<u8>,
}

pub fn export(weights: &Weights, schema: &FeatureSchema) -> ExportedGraphs {
    let fold = Folded::new(weights);
    ExportedGraphs {
        encoder: export_encoder(weights, &fold, schema).encode_to_vec(),
        decoder: export_decoder(weights, &fold).encode_to_vec(),
    }
}

fn export_encoder(weights: &Weights, fold: &Folded, schema: &FeatureSchema) -> ModelProto {
    let mut g = GraphBuilder::default();
    let h = weights.dims.hidden;
    let mut inputs = std::collections::HashMap::new();
    for i in role::encoder_inputs(schema) {
        let ty = if i.categorical {
            DataType::Int64
        } else {
            DataType::Float
        };
        let rows = if i.per_candidate {
            Dim::N
        } else {
            Dim::Fixed(1)
        };
        inputs.insert(i.role, g.input(i.role, ty, &[rows, Dim::Fixed(i.width)]));
    }
    let encoded = weights.encode_as(
        &mut g,
        EncoderInputs {
            ctx_dense: inputs.get(role::CONTEXT_DENSE),
            ctx_ids: inputs.get(role::CONTEXT_CATEGORICAL),
            cand_dense: inputs.get(role::CANDIDATE_DENSE),
            upstream: inputs.get(role::UPSTREAM),
            cand_ids: inputs.get(role::CANDIDATE_CATEGORICAL),
        },
        Some(fold),
    );
    g.output(&encoded.keys, role::KEYS, &[Dim::N, Dim::Fixed(h)]);
    g.output(&encoded.values, role::VALUES, &[Dim::N, Dim::Fixed(h)]);
    g.output(&encoded.state, role::STATE, &[Dim::Fixed(1), Dim::Fixed(h)]);
    g.finish("degre_encoder")
}

fn export_decoder(weights: &Weights, fold: &Folded) -> ModelProto {
    let mut g = GraphBuilder::default();
    let row = [Dim::Fixed(1), Dim::Fixed(weights.dims.hidden)];
    let state = g.input(role::STATE, DataType::Float, &row);
    let prev = g.input(role::PREV_VALUE, DataType::Float, &row);
    let (query, next) = weights.step_as(&mut g, &state, &prev, Some(fold));
    g.output(&query, role::QUERY, &row);
    g.output(&next, role::NEXT_STATE, &row);
    g.finish("degre_decoder")
}

#[derive(Clone, Copy)]
enum Dim {
    Fixed(usize),
    N,
}

/// Builds a graph node by node; a matrix is the name of the tensor holding it.
#[derive(Default)]
struct GraphBuilder {
    graph: GraphProto,
    initialized: HashSet<String>,
    next_id: usize,
}

impl GraphBuilder {
    fn input(&mut self, name: &str, ty: DataType, dims: &[Dim]) -> String {
        self.graph.input.push(value_info(name, ty, dims));
        name.to_string()
    }

    fn output(&mut self, tensor: &str, name: &str, dims: &[Dim]) {
        self.node("Identity", &[tensor], vec![], Some(name));
        self.graph
            .output
            .push(value_info(name, DataType::Float, dims));
    }

    fn finish(mut self, name: &str) -> ModelProto {
        self.graph.name = name.to_string();
        ModelProto {
            ir_version: IR_VERSION,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: OPSET,
            }],
            producer_name: "degre".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            graph: Some(self.graph),
            ..ModelProto::default()
        }
    }

    fn node(
        &mut self,
        op: &str,
        inputs: &[&str],
        attribute: Vec<AttributeProto>,
        output: Option<&str>,
    ) -> String {
        self.next_id += 1;
        let out = output.map_or_else(|| format!("t{}_{op}", self.next_id), str::to_string);
        self.graph.node.push(NodeProto {
            name: format!("n{}_{op}", self.next_id),
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            attribute,
            ..NodeProto::default()
        });
        out
    }

    fn constant(&mut self, name: String, tensor: impl FnOnce(String) -> TensorProto) -> String {
        if self.initialized.insert(name.clone()) {
            self.graph.initializer.push(tensor(name.clone()));
        }
        name
    }

    fn op(&mut self, op: &str, inputs: &[&str]) -> String {
        self.node(op, inputs, vec![], None)
    }
}

impl Ops for GraphBuilder {
    type Mat = String;
    type Ids = String;

    fn param(&mut self, p: &Param) -> String {
        self.constant(p.name.to_string(), |name| {
            f32_tensor(name, &[p.rows as i64, p.cols as i64], &p.data)
        })
    }
    fn matmul(&mut self, a: &String, b: &String) -> String {
        self.op("MatMul", &[a, b])
    }
    fn matmul_t(&mut self, a: &String, b: &String) -> String {
        let bt = self.transpose(b);
        self.op("MatMul", &[a, &bt])
    }
    fn transpose(&mut self, a: &String) -> String {
        self.node("Transpose", &[a], vec![ints_attr("perm", &[1, 0])], None)
    }
    fn add(&mut self, a: &String, b: &String) -> String {
        self.op("Add", &[a, b])
    }
    fn scale(&mut self, a: &String, factor: f32) -> String {
        let c = self.constant(format!("scale_{}", factor.to_bits()), |name| {
            f32_tensor(name, &[], &[factor])
        });
        self.op("Mul", &[a, &c])
    }
    fn relu(&mut self, a: &String) -> String {
        self.op("Relu", &[a])
    }
    fn tanh(&mut self, a: &String) -> String {
        self.op("Tanh", &[a])
    }
    fn softmax_rows(&mut self, a: &String) -> String {
        self.node("Softmax", &[a], vec![int_attr("axis", -1)], None)
    }
    fn mean_rows(&mut self, a: &String) -> String {
        let attrs = vec![ints_attr("axes", &[0]), int_attr("keepdims", 1)];
        self.node("ReduceMean", &[a], attrs, None)
    }
    fn concat_cols(&mut self, parts: &[String]) -> String {
        let inputs: Vec<&str> = parts.iter().map(String::as_str).collect();
        self.node("Concat", &inputs, vec![int_attr("axis", 1)], None)
    }
    fn embed(&mut self, ids: &String, table: &Param, offsets: &[i64]) -> String {
        let offsets_name = self.constant(format!("{}_offsets", table.name), |name| {
            i64_tensor(name, &[offsets.len() as i64], offsets)
        });
        let width = (offsets.len() * table.cols) as i64;
        let shape = self.constant(format!("{}_shape", table.name), |name| {
            i64_tensor(name, &[2], &[-1, width])
        });
        let rows = self.op("Add", &[ids, &offsets_name]);
        let table = self.param(table);
        let looked_up = self.node("Gather", &[&table, &rows], vec![int_attr("axis", 0)], None);
        self.op("Reshape", &[&looked_up, &shape])
    }
}

fn value_info(name: &str, ty: DataType, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Fixed(v) => DimValue::DimValue(*v as i64),
                Dim::N => DimValue::DimParam(N.into()),
            }),
            ..Dimension::default()
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: ty as i32,
                shape: Some(TensorShapeProto { dim }),
            })),
            ..TypeProto::default()
        }),
        ..ValueInfoProto::default()
    }
}

fn f32_tensor(name: String, dims: &[i64], data: &[f32]) -> TensorProto {
    TensorProto {
        name,
        dims: dims.to_vec(),
        data_type: DataType::Float as i32,
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..TensorProto::default()
    }
}

fn i64_tensor(name: String, dims: &[i64], data: &[i64]) -> TensorProto {
    TensorProto {
        name,
        dims: dims.to_vec(),
        data_type: DataType::Int64 as i32,
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..TensorProto::default()
    }
}

fn int_attr(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: tract_onnx::pb::attribute_proto::AttributeType::Int as i32,
        i: value,
        ..AttributeProto::default()
    }
}

fn ints_attr(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: tract_onnx::pb::attribute_proto::AttributeType::Ints as i32,
        ints: values.to_vec(),
        ..AttributeProto::default()
    }
}
