//! The few tensor operations the generator is made of. Every matrix is 2-D; row vectors are
//! `[1, C]` and broadcast over rows in [`Ops::add`].

use super::Param;

pub trait Ops {
    /// A 2-D f32 matrix (a value, or the name of a graph tensor).
    type Mat: Clone;
    /// A `[rows, features]` matrix of categorical ids.
    type Ids;

    fn param(&mut self, p: &Param) -> Self::Mat;
    fn matmul(&mut self, a: &Self::Mat, b: &Self::Mat) -> Self::Mat;
    /// `a · bᵀ`.
    fn matmul_t(&mut self, a: &Self::Mat, b: &Self::Mat) -> Self::Mat;
    /// `aᵀ`.
    fn transpose(&mut self, a: &Self::Mat) -> Self::Mat;
    /// Element-wise sum; `b` may be a `[1, C]` row broadcast over the rows of `a`.
    fn add(&mut self, a: &Self::Mat, b: &Self::Mat) -> Self::Mat;
    fn scale(&mut self, a: &Self::Mat, factor: f32) -> Self::Mat;
    fn relu(&mut self, a: &Self::Mat) -> Self::Mat;
    fn tanh(&mut self, a: &Self::Mat) -> Self::Mat;
    /// Softmax along each row, whose columns are candidates (where an implementation pads
    /// a batch to its longest request, the padding gets no weight).
    fn softmax_rows(&mut self, a: &Self::Mat) -> Self::Mat;
    /// Softmax along each row, whose columns are not candidates (never padded).
    fn softmax_rows_unmasked(&mut self, a: &Self::Mat) -> Self::Mat {
        self.softmax_rows(a)
    }
    /// `[R, C] → [1, C]`.
    fn mean_rows(&mut self, a: &Self::Mat) -> Self::Mat;
    fn concat_cols(&mut self, parts: &[Self::Mat]) -> Self::Mat;
    /// Looks up `ids[r, j] + offsets[j]` in `table` and lays the F embeddings of a row side
    /// by side: `[R, F] → [R, F·E]`.
    fn embed(&mut self, ids: &Self::Ids, table: &Param, offsets: &[i64]) -> Self::Mat;
}
