//! Compiles an ONNX graph into a [`Program`]. Only the operators, attributes and shapes the
//! program runs exactly are accepted; anything else is [`Unsupported`], and the version is
//! served by tract instead.

use std::collections::HashMap;

use tract_onnx::pb::{tensor_proto::DataType, GraphProto, NodeProto, TensorProto};

use super::program::{
    unsupported, Binary, Broadcast, Dim, InputSpec, Instr, Program, Shape, Src, Ty, Unary,
    Unsupported,
};

/// A named tensor during compilation. `gathered` marks a Gather's `[R, F, E]` result, held
/// flat as `[R, F·E]`: only a Reshape to exactly that may read it.
#[derive(Debug, Clone, Copy)]
struct Tensor {
    src: Src,
    ty: Ty,
    shape: Shape,
    gathered: bool,
}

struct Compiler {
    program: Program,
    tensors: HashMap<String, Tensor>,
}

impl Program {
    /// Compiles `graph`, fed `inputs` in this order, into a program producing the f32
    /// outputs named `outputs` (in this order).
    pub fn compile(
        graph: &GraphProto,
        inputs: &[InputSpec],
        outputs: &[&str],
    ) -> Result<Program, Unsupported> {
        let mut c = Compiler {
            program: Program {
                instrs: Vec::new(),
                f32_input_shapes: Vec::new(),
                i64_input_shapes: Vec::new(),
                f32_consts: Vec::new(),
                i64_consts: Vec::new(),
                f32_slot_shapes: Vec::new(),
                f32_const_shapes: Vec::new(),
                i64_slot_shapes: Vec::new(),
                i64_const_shapes: Vec::new(),
                outputs: Vec::new(),
            },
            tensors: HashMap::new(),
        };
        for input in inputs {
            let p = &mut c.program;
            let shapes = match input.ty {
                Ty::F32 => &mut p.f32_input_shapes,
                Ty::I64 => &mut p.i64_input_shapes,
            };
            shapes.push(input.shape);
            let src = Src::Input(shapes.len() - 1);
            c.define(&input.name, src, input.ty, input.shape);
        }
        for init in &graph.initializer {
            c.constant(init)?;
        }
        for node in &graph.node {
            c.node(node)
                .map_err(|Unsupported(why)| Unsupported(format!("node {:?}: {why}", node.name)))?;
        }
        for name in outputs {
            let t = c.get(name)?;
            if t.ty != Ty::F32 {
                return unsupported(format!("output {name:?} is not f32"));
            }
            let slot = match t.src {
                Src::Slot(slot) => slot,
                other => {
                    let out = c.slot(t.shape);
                    c.emit(Instr::Copy { x: other, out });
                    out
                }
            };
            c.program.outputs.push(slot);
        }
        Ok(c.program)
    }
}

impl Compiler {
    fn define(&mut self, name: &str, src: Src, ty: Ty, shape: Shape) {
        let tensor = Tensor {
            src,
            ty,
            shape,
            gathered: false,
        };
        self.tensors.insert(name.to_string(), tensor);
    }

    fn get(&self, name: &str) -> Result<Tensor, Unsupported> {
        match self.tensors.get(name) {
            Some(t) => Ok(*t),
            None => unsupported(format!("tensor {name:?} is not defined before use")),
        }
    }

    /// An f32 operand of an ordinary (2-D) operator.
    fn f32_operand(&self, name: &str) -> Result<Tensor, Unsupported> {
        let t = self.get(name)?;
        if t.ty != Ty::F32 || t.gathered {
            return unsupported(format!("{name:?} is not a 2-D f32 tensor"));
        }
        Ok(t)
    }

    fn slot(&mut self, shape: Shape) -> usize {
        self.program.f32_slot_shapes.push(shape);
        self.program.f32_slot_shapes.len() - 1
    }

    fn emit(&mut self, instr: Instr) {
        self.program.instrs.push(instr);
    }

    fn constant(&mut self, init: &TensorProto) -> Result<(), Unsupported> {
        if self.tensors.contains_key(&init.name) {
            // An input's default value (IR < 4): the fed value would have to win.
            return unsupported(format!("initializer {:?} shadows an input", init.name));
        }
        if init.dims.iter().any(|&d| d < 0) {
            return unsupported(format!(
                "initializer {:?} has a negative dimension",
                init.name
            ));
        }
        let dims: Vec<usize> = init.dims.iter().map(|&d| d as usize).collect();
        let shape = match dims[..] {
            [] => Shape {
                rows: Dim::Fixed(1),
                cols: Dim::Fixed(1),
            },
            [c] => Shape {
                rows: Dim::Fixed(1),
                cols: Dim::Fixed(c),
            },
            [r, c] => Shape {
                rows: Dim::Fixed(r),
                cols: Dim::Fixed(c),
            },
            _ => return unsupported(format!("initializer {:?} has rank > 2", init.name)),
        };
        if dims.contains(&0) {
            // Every kernel assumes non-empty rows; tract serves such a graph.
            return unsupported(format!(
                "initializer {:?} has an empty dimension",
                init.name
            ));
        }
        let Some(count) = dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d)) else {
            return unsupported(format!("initializer {:?} is too large", init.name));
        };
        let p = &mut self.program;
        let (src, ty) = if init.data_type == DataType::Float as i32 {
            let data = constant_data(init, count, f32::from_le_bytes, &init.float_data)?;
            (
                push_const(&mut p.f32_consts, &mut p.f32_const_shapes, data, shape),
                Ty::F32,
            )
        } else if init.data_type == DataType::Int64 as i32 {
            let data = constant_data(init, count, i64::from_le_bytes, &init.int64_data)?;
            (
                push_const(&mut p.i64_consts, &mut p.i64_const_shapes, data, shape),
                Ty::I64,
            )
        } else {
            return unsupported(format!("initializer {:?} is not f32 or i64", init.name));
        };
        self.define(&init.name, src, ty, shape);
        Ok(())
    }

    fn node(&mut self, node: &NodeProto) -> Result<(), Unsupported> {
        if !node.domain.is_empty() && node.domain != "ai.onnx" {
            return unsupported(format!("domain {:?}", node.domain));
        }
        let [output] = &node.output[..] else {
            return unsupported("not exactly one output");
        };
        let input = |i: usize| -> Result<&str, Unsupported> {
            node.input
                .get(i)
                .map(String::as_str)
                .ok_or_else(|| Unsupported(format!("missing input {i}")))
        };
        let arity = |n: usize| {
            if node.input.len() == n {
                Ok(())
            } else {
                unsupported(format!("{} inputs, expected {n}", node.input.len()))
            }
        };
        let attrs = Attrs(node);
        let op = node.op_type.as_str();
        match op {
            "MatMul" => {
                arity(2)?;
                attrs.none()?;
                let (a, b) = (self.f32_operand(input(0)?)?, self.f32_operand(input(1)?)?);
                if a.shape.cols != b.shape.rows {
                    return unsupported(format!("MatMul of {:?} by {:?}", a.shape, b.shape));
                }
                let shape = Shape {
                    rows: a.shape.rows,
                    cols: b.shape.cols,
                };
                let out = self.slot(shape);
                self.emit(Instr::MatMul {
                    a: a.src,
                    b: b.src,
                    out,
                });
                self.define(output, Src::Slot(out), Ty::F32, shape);
            }
            "Transpose" => {
                arity(1)?;
                attrs.only(&["perm"])?;
                if !matches!(attrs.ints("perm")?.as_deref(), None | Some([1, 0])) {
                    return unsupported("perm other than [1, 0]");
                }
                let x = self.f32_operand(input(0)?)?;
                let shape = Shape {
                    rows: x.shape.cols,
                    cols: x.shape.rows,
                };
                let out = self.slot(shape);
                self.emit(Instr::Transpose { x: x.src, out });
                self.define(output, Src::Slot(out), Ty::F32, shape);
            }
            "Add" | "Mul" => {
                arity(2)?;
                attrs.none()?;
                let (a, b) = (self.get(input(0)?)?, self.get(input(1)?)?);
                if a.ty == Ty::I64 && b.ty == Ty::I64 && op == "Add" {
                    return self.add_ids(a, b, output);
                }
                let (a, b) = (self.f32_operand(input(0)?)?, self.f32_operand(input(1)?)?);
                // Both operators commute: put the operand that broadcasts on the right.
                let (a, b) = if broadcast(a.shape, b.shape).is_some() {
                    (a, b)
                } else {
                    (b, a)
                };
                let Some(broadcast) = broadcast(a.shape, b.shape) else {
                    return unsupported(format!("{op} of {:?} and {:?}", a.shape, b.shape));
                };
                let out = self.slot(a.shape);
                let op = if op == "Add" {
                    Binary::Add
                } else {
                    Binary::Mul
                };
                self.emit(Instr::Elementwise {
                    op,
                    a: a.src,
                    b: b.src,
                    broadcast,
                    out,
                });
                self.define(output, Src::Slot(out), Ty::F32, a.shape);
            }
            "Relu" | "Tanh" => {
                arity(1)?;
                attrs.none()?;
                let x = self.f32_operand(input(0)?)?;
                let op = if op == "Relu" {
                    Unary::Relu
                } else {
                    Unary::Tanh
                };
                let out = self.slot(x.shape);
                self.emit(Instr::Map { op, x: x.src, out });
                self.define(output, Src::Slot(out), Ty::F32, x.shape);
            }
            "Softmax" => {
                arity(1)?;
                attrs.only(&["axis"])?;
                // Opset 13: the axis defaults to the last one.
                if !matches!(attrs.int("axis")?, None | Some(-1) | Some(1)) {
                    return unsupported("softmax over an axis other than the last");
                }
                let x = self.f32_operand(input(0)?)?;
                let out = self.slot(x.shape);
                self.emit(Instr::Softmax { x: x.src, out });
                self.define(output, Src::Slot(out), Ty::F32, x.shape);
            }
            "ReduceMean" => {
                arity(1)?;
                attrs.only(&["axes", "keepdims"])?;
                if attrs.ints("axes")?.as_deref() != Some(&[0]) || attrs.int("keepdims")? != Some(1)
                {
                    return unsupported("ReduceMean other than axes=[0], keepdims=1");
                }
                let x = self.f32_operand(input(0)?)?;
                let shape = Shape {
                    rows: Dim::Fixed(1),
                    cols: x.shape.cols,
                };
                let out = self.slot(shape);
                self.emit(Instr::MeanRows { x: x.src, out });
                self.define(output, Src::Slot(out), Ty::F32, shape);
            }
            "Concat" => {
                attrs.only(&["axis"])?;
                if !matches!(attrs.int("axis")?, Some(1) | Some(-1)) {
                    return unsupported("Concat other than along columns");
                }
                let parts = node
                    .input
                    .iter()
                    .map(|name| self.f32_operand(name))
                    .collect::<Result<Vec<_>, _>>()?;
                let Some(first) = parts.first() else {
                    return unsupported("Concat of nothing");
                };
                let mut cols = 0;
                for part in &parts {
                    match part.shape.cols {
                        Dim::Fixed(c) if part.shape.rows == first.shape.rows => cols += c,
                        _ => return unsupported("Concat of unequal rows or N columns"),
                    }
                }
                let shape = Shape {
                    rows: first.shape.rows,
                    cols: Dim::Fixed(cols),
                };
                let out = self.slot(shape);
                let parts = parts.iter().map(|p| p.src).collect();
                self.emit(Instr::Concat { parts, out });
                self.define(output, Src::Slot(out), Ty::F32, shape);
            }
            "Gather" => {
                arity(2)?;
                attrs.only(&["axis"])?;
                if !matches!(attrs.int("axis")?, None | Some(0)) {
                    return unsupported("Gather along an axis other than 0");
                }
                let (table, ids) = (self.f32_operand(input(0)?)?, self.get(input(1)?)?);
                let (Src::Const(table_ix), Dim::Fixed(width), Ty::I64, Dim::Fixed(features)) =
                    (table.src, table.shape.cols, ids.ty, ids.shape.cols)
                else {
                    return unsupported("Gather other than ids from a constant table");
                };
                let shape = Shape {
                    rows: ids.shape.rows,
                    cols: Dim::Fixed(features * width),
                };
                let out = self.slot(shape);
                self.emit(Instr::Gather {
                    table: table_ix,
                    ids: ids.src,
                    out,
                });
                self.tensors.insert(
                    output.clone(),
                    Tensor {
                        src: Src::Slot(out),
                        ty: Ty::F32,
                        shape,
                        gathered: true,
                    },
                );
            }
            "Reshape" => {
                arity(2)?;
                attrs.only(&["allowzero"])?;
                let x = self.get(input(0)?)?;
                let target = self.get(input(1)?)?;
                let Src::Const(target_ix) = target.src else {
                    return unsupported("Reshape to a computed shape");
                };
                let target = &self.program.i64_consts[target_ix];
                // Only the identity on the flat layout: [-1 or rows, cols].
                let rows_ok = |r: i64| r == -1 || Dim::Fixed(r as usize) == x.shape.rows;
                match (&target[..], x.shape.cols) {
                    (&[r, c], Dim::Fixed(cols)) if rows_ok(r) && c as usize == cols => {}
                    _ => return unsupported(format!("Reshape to {target:?}")),
                }
                self.define(output, x.src, x.ty, x.shape);
            }
            "Identity" => {
                arity(1)?;
                let x = self.get(input(0)?)?;
                self.tensors.insert(output.clone(), x);
            }
            other => return unsupported(format!("operator {other}")),
        }
        Ok(())
    }

    fn add_ids(&mut self, a: Tensor, b: Tensor, output: &str) -> Result<(), Unsupported> {
        let (ids, offsets) = if b.shape.rows == Dim::Fixed(1) {
            (a, b)
        } else {
            (b, a)
        };
        if a.gathered || b.gathered || offsets.shape.cols != ids.shape.cols {
            return unsupported("i64 Add other than ids + a row of offsets");
        }
        if offsets.shape.rows != Dim::Fixed(1) {
            return unsupported("i64 Add other than ids + a row of offsets");
        }
        self.program.i64_slot_shapes.push(ids.shape);
        let out = self.program.i64_slot_shapes.len() - 1;
        self.emit(Instr::AddIds {
            ids: ids.src,
            offsets: offsets.src,
            out,
        });
        self.define(output, Src::Slot(out), Ty::I64, ids.shape);
        Ok(())
    }
}

/// How `b` broadcasts over `a` (numpy rules restricted to what the kernels run).
fn broadcast(a: Shape, b: Shape) -> Option<Broadcast> {
    let one = Dim::Fixed(1);
    if a == b {
        Some(Broadcast::Same)
    } else if b.rows == one && b.cols == a.cols {
        Some(Broadcast::Row)
    } else if b.rows == one && b.cols == one {
        Some(Broadcast::Scalar)
    } else {
        None
    }
}

/// An initializer's `count` values, from its raw little-endian bytes or its typed field.
fn constant_data<T: Copy, const SIZE: usize>(
    init: &TensorProto,
    count: usize,
    from_le: fn([u8; SIZE]) -> T,
    typed: &[T],
) -> Result<Vec<T>, Unsupported> {
    let data: Vec<T> = if init.raw_data.is_empty() {
        typed.to_vec()
    } else {
        let chunks = init.raw_data.chunks_exact(SIZE);
        chunks
            .map(|b| from_le(b.try_into().expect("chunks of SIZE")))
            .collect()
    };
    if data.len() != count {
        return unsupported(format!(
            "initializer {:?} holds {} values for {count} elements",
            init.name,
            data.len()
        ));
    }
    Ok(data)
}

/// Adds a constant to its table; its source.
fn push_const<T>(
    consts: &mut Vec<Vec<T>>,
    shapes: &mut Vec<Shape>,
    data: Vec<T>,
    shape: Shape,
) -> Src {
    consts.push(data);
    shapes.push(shape);
    Src::Const(consts.len() - 1)
}

/// A node's attributes, read strictly: an attribute the compiler does not know of means the
/// node may mean something the program would not do.
struct Attrs<'a>(&'a NodeProto);

impl Attrs<'_> {
    fn none(&self) -> Result<(), Unsupported> {
        self.only(&[])
    }

    fn only(&self, known: &[&str]) -> Result<(), Unsupported> {
        match self
            .0
            .attribute
            .iter()
            .find(|a| !known.contains(&a.name.as_str()))
        {
            Some(a) => unsupported(format!("attribute {:?}", a.name)),
            None => Ok(()),
        }
    }

    fn int(&self, name: &str) -> Result<Option<i64>, Unsupported> {
        Ok(self
            .0
            .attribute
            .iter()
            .find(|a| a.name == name)
            .map(|a| a.i))
    }

    fn ints(&self, name: &str) -> Result<Option<Vec<i64>>, Unsupported> {
        Ok(self
            .0
            .attribute
            .iter()
            .find(|a| a.name == name)
            .map(|a| a.ints.clone()))
    }
}
