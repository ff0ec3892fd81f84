//! The native engine: runs a version's exported ONNX graphs as compiled straight-line
//! programs over buffers reused from request to request. tract's plans cost microseconds
//! of bookkeeping per operator run (tensor allocation, shape resolution, packing); for a
//! decoder step of three 32×32 products that overhead was the step. The ONNX files stay
//! the model's only definition: the program is compiled from them, graphs outside its
//! operator set are served by tract, and a version is served natively only after the
//! loader checked the program against tract on the warm-up requests.

mod compile;
mod kernels;
mod model;
mod program;

pub use model::NativeModel;
pub use program::{Dim, InputSpec, Program, Shape, Ty, Unsupported};

use crate::rerank::math::tanh;
use program::{Binary, Broadcast, Instr, Src, Unary};

/// Buffers of every computed tensor of one program, kept between runs: they grow to the
/// largest N seen and are then reused without allocating.
#[derive(Debug, Default)]
pub struct Workspace {
    f32: Vec<Vec<f32>>,
    i64: Vec<Vec<i64>>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RunError {
    #[error("{got} {ty} inputs fed, the graph takes {expected}")]
    Inputs {
        ty: &'static str,
        got: usize,
        expected: usize,
    },
    #[error("{ty} input {index} holds {got} values, expected {expected}")]
    Feed {
        ty: &'static str,
        index: usize,
        got: usize,
        expected: usize,
    },
    #[error("id {id} is outside the embedding table of {rows} rows")]
    Id { id: i64, rows: usize },
}

impl Program {
    /// Runs the program for `n` candidates on the f32 and i64 inputs (each in input order).
    pub fn run(
        &self,
        ws: &mut Workspace,
        n: usize,
        f32_feeds: &[&[f32]],
        i64_feeds: &[&[i64]],
    ) -> Result<(), RunError> {
        check_feeds("f32", &self.f32_input_shapes, f32_feeds, n)?;
        check_feeds("i64", &self.i64_input_shapes, i64_feeds, n)?;
        ws.f32.resize_with(self.f32_slot_shapes.len(), Vec::new);
        ws.i64.resize_with(self.i64_slot_shapes.len(), Vec::new);
        let feeds = Feeds {
            program: self,
            f32: f32_feeds,
            i64: i64_feeds,
        };
        for instr in &self.instrs {
            feeds.exec(ws, n, instr)?;
        }
        Ok(())
    }

    /// The `i`-th output of the last run.
    pub fn output<'w>(&self, ws: &'w Workspace, i: usize) -> &'w [f32] {
        &ws.f32[self.outputs[i]]
    }
}

struct Feeds<'a> {
    program: &'a Program,
    f32: &'a [&'a [f32]],
    i64: &'a [&'a [i64]],
}

impl Feeds<'_> {
    fn f32s<'w>(&'w self, ws: &'w Workspace, src: Src) -> &'w [f32] {
        match src {
            Src::Input(i) => self.f32[i],
            Src::Const(i) => &self.program.f32_consts[i],
            Src::Slot(i) => &ws.f32[i],
        }
    }

    fn i64s<'w>(&'w self, ws: &'w Workspace, src: Src) -> &'w [i64] {
        match src {
            Src::Input(i) => self.i64[i],
            Src::Const(i) => &self.program.i64_consts[i],
            Src::Slot(i) => &ws.i64[i],
        }
    }

    fn exec(&self, ws: &mut Workspace, n: usize, instr: &Instr) -> Result<(), RunError> {
        let p = self.program;
        if let Instr::AddIds { ids, offsets, out } = *instr {
            let mut buf = std::mem::take(&mut ws.i64[out]);
            let (ids, offsets) = (self.i64s(ws, ids), self.i64s(ws, offsets));
            buf.clear();
            for row in ids.chunks_exact(offsets.len().max(1)) {
                buf.extend(row.iter().zip(offsets).map(|(&i, &o)| i.wrapping_add(o)));
            }
            ws.i64[out] = buf;
            return Ok(());
        }
        let out = out_slot(instr);
        let shape = p.f32_slot_shapes[out];
        let mut buf = std::mem::take(&mut ws.f32[out]);
        buf.resize(shape.len(n), 0.0);
        let result = self.compute(ws, n, instr, &mut buf);
        ws.f32[out] = buf;
        result
    }

    fn compute(
        &self,
        ws: &Workspace,
        n: usize,
        instr: &Instr,
        out: &mut [f32],
    ) -> Result<(), RunError> {
        let p = self.program;
        let cols = |src: Src| p.f32_shape(src).cols.at(n);
        match *instr {
            Instr::MatMul { a, b, .. } => {
                let b_shape = p.f32_shape(b);
                let (k, c) = (b_shape.rows.at(n), b_shape.cols.at(n));
                kernels::matmul(self.f32s(ws, a), self.f32s(ws, b), out, k, c);
            }
            Instr::Transpose { x, .. } => {
                let shape = p.f32_shape(x);
                kernels::transpose(self.f32s(ws, x), out, shape.rows.at(n), shape.cols.at(n));
            }
            Instr::Elementwise {
                op,
                a,
                b,
                broadcast,
                ..
            } => {
                let (a, b) = (self.f32s(ws, a), self.f32s(ws, b));
                match op {
                    Binary::Add => elementwise(a, b, broadcast, out, |x, y| x + y),
                    Binary::Mul => elementwise(a, b, broadcast, out, |x, y| x * y),
                }
            }
            Instr::Map { op, x, .. } => {
                let x = self.f32s(ws, x);
                match op {
                    Unary::Relu => out.iter_mut().zip(x).for_each(|(o, &v)| *o = v.max(0.0)),
                    Unary::Tanh => out.iter_mut().zip(x).for_each(|(o, &v)| *o = tanh(v)),
                }
            }
            Instr::Softmax { x, .. } => kernels::softmax_rows(self.f32s(ws, x), out, cols(x)),
            Instr::MeanRows { x, .. } => kernels::mean_rows(self.f32s(ws, x), out, cols(x)),
            Instr::Concat { ref parts, .. } => {
                let width = out.len() / p.f32_shape(parts[0]).rows.at(n).max(1);
                let mut start = 0;
                for &part in parts {
                    let c = cols(part);
                    let rows = out.chunks_exact_mut(width);
                    for (o_row, x_row) in rows.zip(self.f32s(ws, part).chunks_exact(c.max(1))) {
                        o_row[start..start + c].copy_from_slice(x_row);
                    }
                    start += c;
                }
            }
            Instr::Gather { table, ids, .. } => {
                let width = p.f32_const_shapes[table].cols.at(n);
                let table = &p.f32_consts[table];
                let rows = table.len() / width.max(1);
                let ids = self.i64s(ws, ids);
                for (&id, o) in ids.iter().zip(out.chunks_exact_mut(width.max(1))) {
                    // ONNX Gather counts negative indices from the end.
                    let row = if id < 0 { id + rows as i64 } else { id };
                    if !(0..rows as i64).contains(&row) {
                        return Err(RunError::Id { id, rows });
                    }
                    let row = row as usize;
                    o.copy_from_slice(&table[row * width..(row + 1) * width]);
                }
            }
            Instr::Copy { x, .. } => out.copy_from_slice(self.f32s(ws, x)),
            // Writes an i64 slot: run by `exec` before an f32 slot is taken.
            Instr::AddIds { .. } => {}
        }
        Ok(())
    }
}

/// `out = f(a, b)` element-wise, `b` broadcast over `a`; monomorphised per `f` so each loop
/// vectorises.
#[inline(always)]
fn elementwise(
    a: &[f32],
    b: &[f32],
    broadcast: Broadcast,
    out: &mut [f32],
    f: impl Fn(f32, f32) -> f32,
) {
    match broadcast {
        Broadcast::Same => {
            for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
                *o = f(x, y);
            }
        }
        Broadcast::Row => {
            let rows = out.chunks_exact_mut(b.len()).zip(a.chunks_exact(b.len()));
            for (o_row, a_row) in rows {
                for ((o, &x), &y) in o_row.iter_mut().zip(a_row).zip(b) {
                    *o = f(x, y);
                }
            }
        }
        Broadcast::Scalar => {
            let y = b[0];
            for (o, &x) in out.iter_mut().zip(a) {
                *o = f(x, y);
            }
        }
    }
}

/// The feeds are as many as the inputs, each of its shape's length at `n` rows.
fn check_feeds<T>(
    ty: &'static str,
    shapes: &[Shape],
    feeds: &[&[T]],
    n: usize,
) -> Result<(), RunError> {
    if feeds.len() != shapes.len() {
        return Err(RunError::Inputs {
            ty,
            got: feeds.len(),
            expected: shapes.len(),
        });
    }
    for (index, (feed, shape)) in feeds.iter().zip(shapes).enumerate() {
        if feed.len() != shape.len(n) {
            return Err(RunError::Feed {
                ty,
                index,
                got: feed.len(),
                expected: shape.len(n),
            });
        }
    }
    Ok(())
}

fn out_slot(instr: &Instr) -> usize {
    match *instr {
        Instr::MatMul { out, .. }
        | Instr::Transpose { out, .. }
        | Instr::Elementwise { out, .. }
        | Instr::Map { out, .. }
        | Instr::Softmax { out, .. }
        | Instr::MeanRows { out, .. }
        | Instr::Concat { out, .. }
        | Instr::Gather { out, .. }
        | Instr::Copy { out, .. }
        | Instr::AddIds { out, .. } => out,
    }
}
