//! The Parquet encoding: one row per request, nested columns (documented in `docs/data.md`).

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Decimal128Array, Float32Array, Float64Array,
    Int32Array, Int64Array, ListArray, RecordBatch, StringArray, StructArray,
};
use arrow_buffer::OffsetBuffer;
use arrow_schema::{DataType, Field, Fields, Schema};
use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use super::{FieldError, LogError, LoggedRequest, RawCandidate, RawFeatures, RawRow};

/// What a float column may hold: Spark and pandas write `double` as often as `float`, and a
/// warehouse keeps money (`values`, e.g. GMV) as `decimal`.
fn is_float(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Float32 | DataType::Float64 | DataType::Decimal128(..)
    )
}

/// Any integer: categorical ids and exposed indices, ids besides strings (warehouse keys
/// are integers), and clicks besides booleans (0/1 labels).
fn is_integer(t: &DataType) -> bool {
    use DataType::*;
    matches!(
        t,
        Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64
    )
}

fn is_click(t: &DataType) -> bool {
    t == &DataType::Boolean || is_integer(t)
}

fn list_type(item: DataType) -> DataType {
    DataType::List(Arc::new(Field::new("item", item, false)))
}

fn feature_fields() -> Vec<Field> {
    vec![
        Field::new("dense", list_type(DataType::Float32), false),
        Field::new("categorical", list_type(DataType::Int64), false),
    ]
}

fn candidate_fields() -> Fields {
    let mut fields = vec![Field::new("item_id", DataType::Utf8, false)];
    fields.extend(feature_fields());
    fields.push(Field::new("ranking_score", DataType::Float32, false));
    fields.into()
}

/// The schema this crate writes (readers also accept int64 `exposed`, int32 categorical
/// ids, `double` for any float, and extra columns).
pub fn schema() -> Schema {
    Schema::new(vec![
        Field::new("request_id", DataType::Utf8, false),
        Field::new("context", DataType::Struct(feature_fields().into()), false),
        Field::new(
            "candidates",
            list_type(DataType::Struct(candidate_fields())),
            false,
        ),
        Field::new("exposed", list_type(DataType::Int32), false),
        Field::new("clicks", list_type(DataType::Boolean), false),
        Field::new("values", list_type(DataType::Float32), true),
    ])
}

pub(super) fn write(path: &Path, rows: &[LoggedRequest]) -> Result<(), LogError> {
    let err = |message: String| LogError::File {
        path: path.to_owned(),
        message,
    };
    let schema = Arc::new(schema());
    let file = File::create(path).map_err(|error| LogError::Io {
        path: path.to_owned(),
        error,
    })?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut writer =
        ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(|e| err(e.to_string()))?;
    // Row groups of a few thousand requests keep the writer's memory bounded.
    for chunk in rows.chunks(4096) {
        let batch =
            RecordBatch::try_new(schema.clone(), columns(chunk)).map_err(|e| err(e.to_string()))?;
        writer.write(&batch).map_err(|e| err(e.to_string()))?;
    }
    writer.close().map_err(|e| err(e.to_string()))?;
    Ok(())
}

fn list<T: Array + 'static>(item: DataType, lengths: Vec<usize>, values: T) -> ListArray {
    let field = Arc::new(Field::new("item", item, false));
    ListArray::new(
        field,
        OffsetBuffer::from_lengths(lengths),
        Arc::new(values),
        None,
    )
}

fn dense_list<'a>(features: impl Iterator<Item = &'a [f32]> + Clone) -> ListArray {
    let lengths = features.clone().map(<[f32]>::len).collect();
    let values = Float32Array::from_iter_values(features.flatten().copied());
    list(DataType::Float32, lengths, values)
}

fn categorical_list<'a>(features: impl Iterator<Item = &'a [i64]> + Clone) -> ListArray {
    let lengths = features.clone().map(<[i64]>::len).collect();
    let values = Int64Array::from_iter_values(features.flatten().copied());
    list(DataType::Int64, lengths, values)
}

fn columns(rows: &[LoggedRequest]) -> Vec<ArrayRef> {
    let request_id = StringArray::from_iter_values(rows.iter().map(|r| &r.request_id));
    let context = StructArray::new(
        feature_fields().into(),
        vec![
            Arc::new(dense_list(rows.iter().map(|r| &r.context.dense[..]))),
            Arc::new(categorical_list(
                rows.iter().map(|r| &r.context.categorical[..]),
            )),
        ],
        None,
    );
    let all = || rows.iter().flat_map(|r| &r.candidates);
    let candidates = StructArray::new(
        candidate_fields(),
        vec![
            Arc::new(StringArray::from(
                all().map(|c| c.item_id.as_str()).collect::<Vec<_>>(),
            )),
            Arc::new(dense_list(all().map(|c| &c.features.dense[..]))),
            Arc::new(categorical_list(all().map(|c| &c.features.categorical[..]))),
            Arc::new(Float32Array::from_iter_values(
                all().map(|c| c.ranking_score),
            )),
        ],
        None,
    );
    let candidates = list(
        DataType::Struct(candidate_fields()),
        rows.iter().map(|r| r.candidates.len()).collect(),
        candidates,
    );
    let exposed = list(
        DataType::Int32,
        rows.iter().map(|r| r.exposed.len()).collect(),
        Int32Array::from_iter_values(
            rows.iter()
                .flat_map(|r| r.exposed.iter().map(|&i| i as i32)),
        ),
    );
    let clicks = list(
        DataType::Boolean,
        rows.iter().map(|r| r.clicks.len()).collect(),
        BooleanArray::from_iter(rows.iter().flat_map(|r| r.clicks.iter().map(|&c| Some(c)))),
    );
    let values_field = Arc::new(Field::new("item", DataType::Float32, false));
    let values = ListArray::from_iter_primitive::<arrow_array::types::Float32Type, _, _>(
        rows.iter()
            .map(|r| r.values.as_ref().map(|v| v.iter().map(|&x| Some(x)))),
    );
    // from_iter_primitive marks items nullable; restate the declared, non-null item field.
    let (_, offsets, items, nulls) = values.into_parts();
    let values = ListArray::new(values_field, offsets, items, nulls);
    vec![
        Arc::new(request_id),
        Arc::new(context),
        Arc::new(candidates),
        Arc::new(exposed),
        Arc::new(clicks),
        Arc::new(values),
    ]
}

/// Decodes every row; row numbers count from 1 across row groups.
pub(super) fn read(path: &Path) -> Result<Vec<(usize, RawRow)>, LogError> {
    let file_err = |message: String| LogError::File {
        path: path.to_owned(),
        message,
    };
    let file = File::open(path).map_err(|error| LogError::Io {
        path: path.to_owned(),
        error,
    })?;
    // The Parquet types, not the writer's Arrow schema: Polars stores `large_list` and
    // `large_string`, pandas categoricals a dictionary, and each reads back as the list and
    // string this reader checks.
    let options = ArrowReaderOptions::new().with_skip_arrow_metadata(true);
    let reader = ParquetRecordBatchReaderBuilder::try_new_with_options(file, options)
        .and_then(|b| b.with_batch_size(4096).build())
        .map_err(|e| file_err(format!("not a readable Parquet file: {e}")))?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| file_err(e.to_string()))?;
        let columns = Columns::of(&batch).map_err(file_err)?;
        for i in 0..batch.num_rows() {
            let row = columns.row(i).map_err(|e| e.at(path, rows.len() + 1))?;
            rows.push((rows.len() + 1, row));
        }
    }
    Ok(rows)
}

/// The typed columns of one batch, checked once.
struct Columns<'a> {
    request_id: &'a ArrayRef,
    context: &'a StructArray,
    context_features: FeatureColumns<'a>,
    candidates: &'a ListArray,
    item_id: &'a ArrayRef,
    candidate_features: FeatureColumns<'a>,
    ranking_score: Option<&'a ArrayRef>,
    exposed: &'a ListArray,
    clicks: &'a ListArray,
    values: Option<&'a ListArray>,
}

struct FeatureColumns<'a> {
    dense: &'a ListArray,
    categorical: &'a ListArray,
}

fn child<'a>(
    columns: &'a [ArrayRef],
    names: &Fields,
    name: &str,
    path: &str,
) -> Result<&'a ArrayRef, String> {
    names
        .iter()
        .position(|f| f.name() == name)
        .map(|i| &columns[i])
        .ok_or_else(|| format!("missing column `{path}{name}`"))
}

/// The error for a column that is not of the type `want` names.
fn wrong_type(array: &ArrayRef, column: &str, want: &str) -> String {
    format!(
        "column `{column}` has type {}, expected {want}",
        array.data_type()
    )
}

fn typed<'a, T: 'static>(array: &'a ArrayRef, column: &str, want: &str) -> Result<&'a T, String> {
    (array.as_any().downcast_ref::<T>()).ok_or_else(|| wrong_type(array, column, want))
}

/// A string or integer column, read item by item with [`text_at`]. Older Hive and Impala
/// write strings as bytes without the UTF-8 annotation (what Spark's `binaryAsString` is
/// for): read as text.
fn id_column<'a>(array: &'a ArrayRef, column: &str) -> Result<&'a ArrayRef, String> {
    let text = matches!(array.data_type(), DataType::Utf8 | DataType::Binary);
    match text || is_integer(array.data_type()) {
        true => Ok(array),
        false => Err(wrong_type(array, column, "string")),
    }
}

/// A `float` or `double` column, read item by item with [`float_at`].
fn float_column<'a>(array: &'a ArrayRef, column: &str) -> Result<&'a ArrayRef, String> {
    match is_float(array.data_type()) {
        true => Ok(array),
        false => Err(wrong_type(array, column, "float")),
    }
}

fn list_of<'a>(
    array: &'a ArrayRef,
    column: &str,
    items: fn(&DataType) -> bool,
    want: &str,
) -> Result<&'a ListArray, String> {
    let list: &ListArray = typed(array, column, want)?;
    match items(&list.value_type()) {
        true => Ok(list),
        false => Err(wrong_type(array, column, want)),
    }
}

fn feature_columns<'a>(parent: &'a StructArray, path: &str) -> Result<FeatureColumns<'a>, String> {
    let fields = parent.fields();
    let columns = parent.columns();
    let dense = child(columns, fields, "dense", path)?;
    let categorical = child(columns, fields, "categorical", path)?;
    Ok(FeatureColumns {
        dense: list_of(dense, &format!("{path}dense"), is_float, "list<float>")?,
        categorical: list_of(
            categorical,
            &format!("{path}categorical"),
            is_integer,
            "list<int64>",
        )?,
    })
}

impl<'a> Columns<'a> {
    fn of(batch: &'a RecordBatch) -> Result<Columns<'a>, String> {
        let fields = batch.schema_ref().fields().clone();
        let columns = batch.columns();
        let column = |name: &str| child(columns, &fields, name, "");
        let context: &StructArray = typed(column("context")?, "context", "struct")?;
        let candidates: &ListArray = typed(column("candidates")?, "candidates", "list<struct>")?;
        let candidate_structs: &StructArray =
            candidates.values().as_any().downcast_ref().ok_or_else(|| {
                format!(
                    "column `candidates` has type {}, expected list<struct>",
                    candidates.data_type()
                )
            })?;
        let candidate_columns = candidate_structs.columns();
        let candidate_fields = candidate_structs.fields();
        let item_id = child(
            candidate_columns,
            candidate_fields,
            "item_id",
            "candidates.",
        )?;
        // Optional: without it each row's candidates are in the ranking stage's order.
        let ranking_score = child(
            candidate_columns,
            candidate_fields,
            "ranking_score",
            "candidates.",
        )
        .ok()
        .map(|scores| float_column(scores, "candidates.ranking_score"))
        .transpose()?;
        let values = match fields.iter().position(|f| f.name() == "values") {
            Some(i) => Some(list_of(&columns[i], "values", is_float, "list<float>")?),
            None => None,
        };
        Ok(Columns {
            request_id: id_column(column("request_id")?, "request_id")?,
            context,
            context_features: feature_columns(context, "context.")?,
            candidates,
            item_id: id_column(item_id, "candidates.item_id")?,
            candidate_features: feature_columns(candidate_structs, "candidates.")?,
            ranking_score,
            exposed: list_of(column("exposed")?, "exposed", is_integer, "list<int32>")?,
            clicks: list_of(column("clicks")?, "clicks", is_click, "list<bool>")?,
            values,
        })
    }

    fn row(&self, i: usize) -> Result<RawRow, FieldError> {
        let context = if self.context.is_valid(i) {
            Some(RawFeatures {
                dense: floats(self.context_features.dense, i, "context.dense")?,
                categorical: ints(self.context_features.categorical, i, "context.categorical")?,
            })
        } else {
            None
        };
        let candidates = if self.candidates.is_valid(i) {
            let offsets = self.candidates.value_offsets();
            let (start, end) = (offsets[i] as usize, offsets[i + 1] as usize);
            let mut candidates = Vec::with_capacity(end - start);
            for (n, j) in (start..end).enumerate() {
                let prefix = format!("candidates[{n}]");
                candidates.push(RawCandidate {
                    item_id: text_at(self.item_id, j),
                    dense: floats(self.candidate_features.dense, j, &format!("{prefix}.dense"))?,
                    categorical: ints(
                        self.candidate_features.categorical,
                        j,
                        &format!("{prefix}.categorical"),
                    )?,
                    ranking_score: self.ranking_score.and_then(|s| float_at(s, j)),
                });
            }
            Some(candidates)
        } else {
            None
        };
        Ok(RawRow {
            request_id: text_at(self.request_id, i),
            context,
            candidates,
            exposed: ints(self.exposed, i, "exposed")?,
            clicks: bools(self.clicks, i, "clicks")?,
            // A null value is 0: a left join of purchases leaves it where none was made.
            // (The column's type was checked: a valid item is a float.)
            values: match self.values {
                Some(values) => items(values, i, "values", |a, k| {
                    Ok(float_at(a, k).unwrap_or_default())
                })?,
                None => None,
            },
        })
    }
}

/// The items of list `i`, `None` if the list is null; an item `read` refuses (a null, by
/// default) is an error.
fn items<T>(
    list: &ListArray,
    i: usize,
    field: &str,
    read: impl Fn(&ArrayRef, usize) -> Result<T, String>,
) -> Result<Option<Vec<T>>, FieldError> {
    if list.is_null(i) {
        return Ok(None);
    }
    let values = list.value(i);
    (0..values.len())
        .map(|k| {
            read(&values, k).map_err(|message| FieldError {
                field: format!("{field}[{k}]"),
                message,
            })
        })
        .collect::<Result<Vec<T>, _>>()
        .map(Some)
}

fn not_null<T>(item: Option<T>) -> Result<T, String> {
    item.ok_or_else(|| "null".to_string())
}

fn floats(list: &ListArray, i: usize, field: &str) -> Result<Option<Vec<f32>>, FieldError> {
    items(list, i, field, |a, k| not_null(float_at(a, k)))
}

/// Item `k` of a string or integer array as text (`None` if null).
fn text_at(a: &ArrayRef, k: usize) -> Option<String> {
    if !a.is_valid(k) {
        return None;
    }
    let any = a.as_any();
    if let Some(strings) = any.downcast_ref::<StringArray>() {
        return Some(strings.value(k).to_string());
    }
    if let Some(bytes) = any.downcast_ref::<BinaryArray>() {
        return Some(String::from_utf8_lossy(bytes.value(k)).into_owned());
    }
    integer_at(a, k).map(|v| v.to_string())
}

/// Item `k` of any integer array, widened (`None` if null or not an integer array).
fn integer_at(a: &ArrayRef, k: usize) -> Option<i128> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::*;
    if !a.is_valid(k) {
        return None;
    }
    Some(match a.data_type() {
        DataType::Int8 => a.as_primitive::<Int8Type>().value(k).into(),
        DataType::Int16 => a.as_primitive::<Int16Type>().value(k).into(),
        DataType::Int32 => a.as_primitive::<Int32Type>().value(k).into(),
        DataType::Int64 => a.as_primitive::<Int64Type>().value(k).into(),
        DataType::UInt8 => a.as_primitive::<UInt8Type>().value(k).into(),
        DataType::UInt16 => a.as_primitive::<UInt16Type>().value(k).into(),
        DataType::UInt32 => a.as_primitive::<UInt32Type>().value(k).into(),
        DataType::UInt64 => a.as_primitive::<UInt64Type>().value(k).into(),
        _ => return None,
    })
}

/// Item `k` of a `float` or `double` array, as f32 (`None` if null). A double beyond f32's
/// range becomes infinite, which validation refuses with the field's name.
fn float_at(a: &ArrayRef, k: usize) -> Option<f32> {
    if !a.is_valid(k) {
        return None;
    }
    let any = a.as_any();
    (any.downcast_ref::<Float32Array>().map(|a| a.value(k)))
        .or_else(|| (any.downcast_ref::<Float64Array>()).map(|a| a.value(k) as f32))
        .or_else(|| {
            let decimals = any.downcast_ref::<Decimal128Array>()?;
            let scale = 10f64.powi(decimals.scale().into());
            Some((decimals.value(k) as f64 / scale) as f32)
        })
}

fn ints(list: &ListArray, i: usize, field: &str) -> Result<Option<Vec<i64>>, FieldError> {
    items(list, i, field, |a, k| {
        let v = not_null(integer_at(a, k))?;
        i64::try_from(v).map_err(|_| format!("{v} is beyond 2^63 - 1"))
    })
}

/// Booleans, or integers that are 0 or 1.
fn bools(list: &ListArray, i: usize, field: &str) -> Result<Option<Vec<bool>>, FieldError> {
    items(list, i, field, |a, k| {
        match a.as_any().downcast_ref::<BooleanArray>() {
            Some(flags) => not_null(flags.is_valid(k).then(|| flags.value(k))),
            None => match not_null(integer_at(a, k))? {
                v @ (0 | 1) => Ok(v == 1),
                v => Err(format!("{v} is not a click (true, false, 0 or 1)")),
            },
        }
    })
}
