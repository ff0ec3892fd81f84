//! A compiled graph: a straight-line program over 2-D tensors whose rows are a constant or
//! the request's candidate count N (`compile.rs` builds it from ONNX, `mod.rs` runs it).

/// A dimension: fixed, or the candidate count of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    Fixed(usize),
    N,
}

impl Dim {
    pub fn at(self, n: usize) -> usize {
        match self {
            Dim::Fixed(v) => v,
            Dim::N => n,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub rows: Dim,
    pub cols: Dim,
}

impl Shape {
    pub fn len(self, n: usize) -> usize {
        self.rows.at(n) * self.cols.at(n)
    }
}

/// Where an operand lives: a fed input, a constant of the graph, or a computed slot. f32 and
/// i64 tensors are numbered separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Src {
    Input(usize),
    Const(usize),
    Slot(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unary {
    Relu,
    Tanh,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binary {
    Add,
    Mul,
}

/// How the right operand of an element-wise op broadcasts over the left one's `[R, C]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broadcast {
    Same,
    Row,
    Scalar,
}

/// One instruction; `out` is always an f32 slot except for [`Instr::AddIds`].
#[derive(Debug, Clone, PartialEq)]
pub enum Instr {
    MatMul {
        a: Src,
        b: Src,
        out: usize,
    },
    Transpose {
        x: Src,
        out: usize,
    },
    Elementwise {
        op: Binary,
        a: Src,
        b: Src,
        broadcast: Broadcast,
        out: usize,
    },
    Map {
        op: Unary,
        x: Src,
        out: usize,
    },
    Softmax {
        x: Src,
        out: usize,
    },
    MeanRows {
        x: Src,
        out: usize,
    },
    Concat {
        parts: Vec<Src>,
        out: usize,
    },
    /// i64 `[R, F] + [1, F]` into an i64 slot.
    AddIds {
        ids: Src,
        offsets: Src,
        out: usize,
    },
    /// Rows of the constant `table` at the ids `[R, F]`, laid side by side: `[R, F·E]`.
    Gather {
        table: usize,
        ids: Src,
        out: usize,
    },
    Copy {
        x: Src,
        out: usize,
    },
}

/// A tensor's element type as fed or computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    F32,
    I64,
}

/// A graph input: its tensor name, element type and shape.
#[derive(Debug, Clone)]
pub struct InputSpec {
    pub name: String,
    pub ty: Ty,
    pub shape: Shape,
}

#[derive(Debug, Clone)]
pub struct Program {
    pub instrs: Vec<Instr>,
    /// Shapes of the f32 and of the i64 inputs, each in feed order (indexed by `Src`).
    pub f32_input_shapes: Vec<Shape>,
    pub i64_input_shapes: Vec<Shape>,
    pub f32_consts: Vec<Vec<f32>>,
    pub i64_consts: Vec<Vec<i64>>,
    /// Shapes of every f32 slot, constant, and of every i64 slot (indexed by `Src`).
    pub f32_slot_shapes: Vec<Shape>,
    pub f32_const_shapes: Vec<Shape>,
    pub i64_slot_shapes: Vec<Shape>,
    pub i64_const_shapes: Vec<Shape>,
    /// The f32 slot of each requested output, in the order asked for.
    pub outputs: Vec<usize>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unsupported(pub String);

pub(super) fn unsupported<T>(why: impl Into<String>) -> Result<T, Unsupported> {
    Err(Unsupported(why.into()))
}

impl Program {
    pub fn f32_shape(&self, src: Src) -> Shape {
        match src {
            Src::Input(i) => self.f32_input_shapes[i],
            Src::Const(i) => self.f32_const_shapes[i],
            Src::Slot(i) => self.f32_slot_shapes[i],
        }
    }
}
