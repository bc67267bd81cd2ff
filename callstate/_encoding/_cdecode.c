/* The data codec's decoder in C: the plain-data tags of callstate._encoding._decoder, compiled.
 *
 * read(decoder, depth) reads one value at decoder.pos exactly as the Python Decoder._read does, and
 * is what a Decoder subclass's _read calls (callstate._encoding._decoder.CDecoder). It builds None,
 * bools, ints, floats, complex, str, bytes, bytearray, lists (packed ones too), tuples, sets,
 * frozensets, dicts and memo references itself; every other tag goes to the Python builder of that
 * tag (_READERS), on the same decoder object, after the state kept here (position, deepest nesting,
 * the allowance's memory and hashing) is written back to it, and is read again after. The memo list,
 * the heights bytearray and the hash-cost dict are the decoder's own objects, shared with the
 * Python builders. decode(stream, buffers, allowance=...) reads an entry of a file (no out-of-band
 * buffer) whole here, as Reader.decode does, and makes that decoder object only if a tag needs it.
 *
 * Every read is checked against the bytes left before it is made, every object is charged to the
 * allowance before it is built, with the same amounts, in the same order, and with the same error
 * messages as the Python reference (tests/test_cdecode.py and fuzz/fuzz_codec_diff.py compare them).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAX_DEPTH 100
#define MAX_INT_BYTES 4096
#define SLOT 20
#define RECORD 224
/* Saturation of hash costs: far above any allowance (4 x 2**59 bytes), far below int64 overflow. */
#define COST_CAP (INT64_C(1) << 61)

enum {
    T_NONE = 'N', T_TRUE = 'T', T_FALSE = 'F', T_SMALL_INT = 'j', T_INT64 = 'i', T_BIG_INT = 'I',
    T_FLOAT = 'f', T_COMPLEX = 'c', T_STR = 's', T_LONG_STR = 'S', T_BYTES = 'y', T_LONG_BYTES = 'Y',
    T_BYTEARRAY = 'a', T_LIST = 'l', T_FLOATS = 'L', T_INT64S = 'K', T_TUPLE = 't', T_SET = 'e',
    T_FROZENSET = 'E', T_DICT = 'd', T_REF = 'r'
};

/* Set once by configure(): the Python builders by tag, the pending marker, the error class, the
 * size class of an empty dict's header. */
static PyObject *readers = NULL;
static PyObject *pending = NULL;
static PyObject *decode_error = NULL;
static int64_t dict_header = 0;
/* Set on the first decode(): the Decoder subclass whose _read is read(), the reference decode. */
static PyObject *decoder_class = NULL;
static PyObject *reference = NULL;
/* This module's read(), given to each decoder made. */
static PyObject *read_function = NULL;

static PyObject *s_data, *s_end, *s_pos, *s_memo, *s_heights, *s_costs, *s_allowance, *s_deepest,
    *s_memory, *s_hashing, *s_oversized, *s_spend_hashing, *s_bound_memory, *s_from_bytes, *s_little,
    *s_bit_length;

/* The allowance tables of callstate._encoding._allowance, computed the same way. */
#define STEPS 64
static int64_t set_counts[STEPS], set_sizes[STEPS], dict_counts[STEPS], dict_sizes[STEPS];
static int n_set_steps, n_dict_steps;

static void
init_steps(void)
{
    int64_t size = 8;
    n_set_steps = 1;
    set_counts[0] = 0;
    set_sizes[0] = 0;
    while (size < (INT64_C(1) << 40) && n_set_steps < STEPS) {
        int64_t n = (3 * (size - 1) + 4) / 5;
        int64_t new_size = 8, limit = n <= 50000 ? n * 4 : n * 2;
        while (new_size <= limit) new_size <<= 1;
        set_counts[n_set_steps] = n;
        set_sizes[n_set_steps] = 16 * new_size + (size > 8 ? 16 * size : 0);
        n_set_steps++;
        size = new_size;
    }
    n_dict_steps = 1;
    dict_counts[0] = 0;
    size = 8;
#define KEYS(s) (32 + (s) * ((s) <= 128 ? 1 : (s) <= (1 << 15) ? 2 : (s) <= (INT64_C(1) << 31) ? 4 : 8) + (2 * (s) / 3) * 24)
    dict_sizes[0] = KEYS(size);
    while (size < (INT64_C(1) << 40) && n_dict_steps < STEPS) {
        dict_counts[n_dict_steps] = 2 * size / 3 + 1;
        dict_sizes[n_dict_steps] = KEYS(2 * size) + KEYS(size);
        n_dict_steps++;
        size *= 2;
    }
#undef KEYS
}

static int64_t
step(const int64_t *counts, const int64_t *sizes, int n_steps, int64_t n)
{
    int i = 0;
    while (i + 1 < n_steps && counts[i + 1] <= n) i++;
    return sizes[i];
}

static inline int64_t list_bytes(int64_t n) { return 104 + 17 * n; }
static inline int64_t set_bytes(int64_t n) { return 224 + step(set_counts, set_sizes, n_set_steps, n); }
static inline int64_t dict_bytes(int64_t n) { return step(dict_counts, dict_sizes, n_dict_steps, n); }

/* -- the reader's state ------------------------------------------------------------------------ */

typedef struct {
    PyObject *dec;       /* the Python decoder (borrowed: the caller holds it), or NULL until needed */
    PyObject *owned_dec; /* the decoder made for a whole decode() (see ensure_dec), or NULL */
    PyObject *call_args, *call_kwargs; /* what makes it: borrowed, set by decode() only */
    PyObject *data;      /* bytes */
    PyObject *memo;      /* list */
    PyObject *heights;   /* bytearray */
    PyObject *costs;     /* dict */
    PyObject *allowance;
    const unsigned char *buf;
    Py_ssize_t pos, end;
    int64_t memory, hashing;
    int unbounded, memory_is_float;
    long deepest;
} R;

static int
get_int64(PyObject *obj, PyObject *name, int64_t *out)
{
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL) return -1;
    int overflow = 0;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    Py_DECREF(v);
    if (x == -1 && PyErr_Occurred()) return -1;
    if (overflow) x = overflow > 0 ? INT64_MAX / 2 : -(INT64_MAX / 2);
    *out = x;
    return 0;
}

/* Read what the Python side may have changed: position, nesting, the allowance. */
static int
load_dynamic(R *r)
{
    if (r->dec != NULL) {
        int64_t pos, deepest;
        if (get_int64(r->dec, s_pos, &pos) < 0 || get_int64(r->dec, s_deepest, &deepest) < 0) return -1;
        if (pos < 0 || pos > r->end) {
            PyErr_SetString(PyExc_SystemError, "decoder position out of range");
            return -1;
        }
        r->pos = (Py_ssize_t)pos;
        r->deepest = (long)deepest;
    }
    PyObject *memory = PyObject_GetAttr(r->allowance, s_memory);
    if (memory == NULL) return -1;
    r->unbounded = 0;
    r->memory_is_float = 0;
    if (PyFloat_Check(memory)) {
        double m = PyFloat_AS_DOUBLE(memory);
        r->memory_is_float = 1;
        if (m > 9e18) r->unbounded = 1;
        else r->memory = m < -9e18 ? INT64_MIN / 2 : (int64_t)m;
        Py_DECREF(memory);
    } else {
        int overflow = 0;
        long long m = PyLong_AsLongLongAndOverflow(memory, &overflow);
        Py_DECREF(memory);
        if (m == -1 && PyErr_Occurred()) return -1;
        if (overflow > 0) r->unbounded = 1;
        r->memory = overflow < 0 ? INT64_MIN / 2 : m;
    }
    return get_int64(r->allowance, s_hashing, &r->hashing);
}

static int
set_int(PyObject *obj, PyObject *name, int64_t value)
{
    PyObject *v = PyLong_FromLongLong(value);
    if (v == NULL) return -1;
    int rc = PyObject_SetAttr(obj, name, v);
    Py_DECREF(v);
    return rc;
}

/* Write back what the Python side reads; keeps any exception being raised. */
static int
store(R *r)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    int rc = 0;
    if ((r->dec != NULL && (set_int(r->dec, s_pos, r->pos) < 0 || set_int(r->dec, s_deepest, r->deepest) < 0))
        || set_int(r->allowance, s_hashing, r->hashing) < 0) {
        rc = -1;
    } else if (!r->unbounded) {
        PyObject *m = r->memory_is_float ? PyFloat_FromDouble((double)r->memory) : PyLong_FromLongLong(r->memory);
        if (m == NULL || PyObject_SetAttr(r->allowance, s_memory, m) < 0) rc = -1;
        Py_XDECREF(m);
    }
    if (type != NULL) {
        if (rc < 0) PyErr_Clear();
        PyErr_Restore(type, value, tb);
        return -1;
    }
    return rc;
}

static void
release(R *r)
{
    Py_CLEAR(r->data);
    Py_CLEAR(r->memo);
    Py_CLEAR(r->heights);
    Py_CLEAR(r->costs);
    Py_CLEAR(r->allowance);
    Py_CLEAR(r->owned_dec);
}

/* Make the Python decoder that a whole decode() reads without until a Python builder (or an error
 * message of the Python side) needs it: it shares this read's memo, heights and costs. */
static int
ensure_dec(R *r)
{
    if (r->dec != NULL) return 0;
    PyObject *dec = PyObject_Call(decoder_class, r->call_args, r->call_kwargs);
    if (dec == NULL) return -1;
    if (PyObject_SetAttr(dec, s_memo, r->memo) < 0 || PyObject_SetAttr(dec, s_heights, r->heights) < 0
        || PyObject_SetAttr(dec, s_costs, r->costs) < 0) {
        Py_DECREF(dec);
        return -1;
    }
    r->dec = r->owned_dec = dec;
    return 0;
}

static int
load(R *r, PyObject *dec)
{
    memset(r, 0, sizeof(*r));
    r->dec = dec;
    r->data = PyObject_GetAttr(dec, s_data);
    r->memo = r->data ? PyObject_GetAttr(dec, s_memo) : NULL;
    r->heights = r->memo ? PyObject_GetAttr(dec, s_heights) : NULL;
    r->costs = r->heights ? PyObject_GetAttr(dec, s_costs) : NULL;
    r->allowance = r->costs ? PyObject_GetAttr(dec, s_allowance) : NULL;
    if (r->allowance == NULL) goto fail;
    if (!PyBytes_CheckExact(r->data) || !PyList_CheckExact(r->memo) || !PyByteArray_CheckExact(r->heights)
        || !PyDict_CheckExact(r->costs)) {
        PyErr_SetString(PyExc_TypeError, "the compiled decoder reads bytes, with a list memo, "
                                         "a bytearray of heights and a dict of costs");
        goto fail;
    }
    r->buf = (const unsigned char *)PyBytes_AS_STRING(r->data);
    int64_t end;
    if (get_int64(dec, s_end, &end) < 0) goto fail;
    if (end < 0 || end > PyBytes_GET_SIZE(r->data)) {
        PyErr_SetString(PyExc_SystemError, "decoder end out of range");
        goto fail;
    }
    r->end = (Py_ssize_t)end;
    if (load_dynamic(r) < 0) goto fail;
    return 0;
fail:
    release(r);
    return -1;
}

/* -- charges and errors ------------------------------------------------------------------------ */

static int
oversized(R *r)
{
    if (ensure_dec(r) == 0 && store(r) == 0) {
        PyObject *res = PyObject_CallMethodNoArgs(r->dec, s_oversized);
        Py_XDECREF(res);
        if (res != NULL) PyErr_SetString(PyExc_SystemError, "_oversized returned");
    }
    return -1;
}

static inline int
charge(R *r, int64_t n)
{
    if (r->unbounded) return 0;
    r->memory -= n;
    return r->memory < 0 ? oversized(r) : 0;
}

static inline void
refund(R *r, int64_t n)
{
    if (!r->unbounded) r->memory += n;
}

static int
spend_hashing(R *r, int64_t cost)
{
    r->hashing -= cost;
    if (r->hashing >= 0) return 0;
    /* The Python side raises its message; with hashing already below 0, spending 0 raises. */
    if (ensure_dec(r) == 0 && store(r) == 0) {
        PyObject *zero = PyLong_FromLong(0);
        PyObject *res = zero ? PyObject_CallMethodOneArg(r->dec, s_spend_hashing, zero) : NULL;
        Py_XDECREF(zero);
        Py_XDECREF(res);
        if (res != NULL) PyErr_SetString(PyExc_SystemError, "_spend_hashing returned");
    }
    return -1;
}

static Py_ssize_t
take(R *r, uint64_t n)
{
    Py_ssize_t start = r->pos;
    if (n > (uint64_t)(r->end - start)) {
        PyErr_Format(decode_error, "a value needs %llu bytes at offset %zd, and %zd are left",
                     (unsigned long long)n, start, r->end - start);
        return -1;
    }
    r->pos = start + (Py_ssize_t)n;
    return start;
}

static inline uint32_t
le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t
le64(const unsigned char *p)
{
    return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32;
}

static inline double
f64(const unsigned char *p)
{
    uint64_t bits = le64(p);
    double x;
    memcpy(&x, &bits, 8);
    return x;
}

static int
u32(R *r, uint32_t *out)
{
    Py_ssize_t at = take(r, 4);
    if (at < 0) return -1;
    *out = le32(r->buf + at);
    return 0;
}

static int
count(R *r, int per_item, uint32_t *out)
{
    if (u32(r, out) < 0) return -1;
    if ((int64_t)*out * per_item > (int64_t)(r->end - r->pos)) {
        PyErr_Format(decode_error, "a count of %lu at offset %zd is more than the bytes left",
                     (unsigned long)*out, r->pos - 4);
        return -1;
    }
    return 0;
}

/* -- memo and nesting --------------------------------------------------------------------------- */

static Py_ssize_t
slot(R *r, PyObject *value)
{
    if (PyList_Append(r->memo, value) < 0) return -1;
    Py_ssize_t n = PyByteArray_GET_SIZE(r->heights);
    if (PyByteArray_Resize(r->heights, n + 1) < 0) return -1;
    PyByteArray_AS_STRING(r->heights)[n] = 0;
    return PyList_GET_SIZE(r->memo) - 1;
}

static int
set_height(R *r, Py_ssize_t index, long height)
{
    if (index < 0 || index >= PyByteArray_GET_SIZE(r->heights) || height < 0 || height > 255) {
        PyErr_SetString(PyExc_SystemError, "memo height out of range");
        return -1;
    }
    PyByteArray_AS_STRING(r->heights)[index] = (char)height;
    return 0;
}

static int
set_memo(R *r, Py_ssize_t index, PyObject *value)
{
    if (index < 0 || index >= PyList_GET_SIZE(r->memo)) {
        PyErr_SetString(PyExc_SystemError, "memo slot out of range");
        return -1;
    }
    Py_INCREF(value);
    return PyList_SetItem(r->memo, index, value);
}

static int
enter(R *r, int depth, long *saved)
{
    if (depth >= MAX_DEPTH) {
        PyErr_Format(decode_error, "nesting deeper than %d levels", MAX_DEPTH);
        return -1;
    }
    *saved = r->deepest;
    r->deepest = depth + 1;
    return 0;
}

static int
leave(R *r, Py_ssize_t index, int depth, long saved)
{
    if (set_height(r, index, r->deepest - depth) < 0) return -1;
    if (saved > r->deepest) r->deepest = saved;
    return 0;
}

static PyObject *
ref(R *r, int depth)
{
    uint32_t index;
    if (u32(r, &index) < 0) return NULL;
    if ((Py_ssize_t)index >= PyList_GET_SIZE(r->memo) || (Py_ssize_t)index >= PyByteArray_GET_SIZE(r->heights)) {
        PyErr_Format(decode_error, "a reference to object %lu, which does not exist yet", (unsigned long)index);
        return NULL;
    }
    PyObject *value = PyList_GET_ITEM(r->memo, index);
    if (value == pending) {
        PyErr_Format(decode_error, "a reference to object %lu from inside itself (it is immutable)",
                     (unsigned long)index);
        return NULL;
    }
    long reach = depth + (unsigned char)PyByteArray_AS_STRING(r->heights)[index];
    if (reach > MAX_DEPTH) {
        PyErr_Format(decode_error, "nesting deeper than %d levels, through a reference", MAX_DEPTH);
        return NULL;
    }
    if (reach > r->deepest) r->deepest = reach;
    Py_INCREF(value);
    return value;
}

/* -- str and bytes ------------------------------------------------------------------------------ */

static int
is_ascii(const unsigned char *p, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++)
        if (p[i] & 0x80) return 0;
    return 1;
}

/* Decode n bytes at start, charged as _text charges them (112 + 2n, and 24 + 3n if not ASCII). */
static PyObject *
utf8(R *r, Py_ssize_t start, Py_ssize_t n)
{
    const unsigned char *p = r->buf + start;
    if (charge(r, 112 + 2 * (int64_t)n) < 0) return NULL;
    if (is_ascii(p, n)) {
        if (n <= 1) return PyUnicode_FromStringAndSize((const char *)p, n); /* the cached ones */
        PyObject *s = PyUnicode_New(n, 127);
        if (s != NULL) memcpy(PyUnicode_DATA(s), p, (size_t)n);
        return s;
    }
    if (charge(r, 24 + 3 * (int64_t)n) < 0) return NULL;
    PyObject *s = PyUnicode_DecodeUTF8((const char *)p, n, "surrogatepass");
    if (s == NULL && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        PyErr_Format(decode_error, "a str that is not UTF-8 (%S)", value);
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
    }
    return s;
}

static PyObject *
text(R *r)
{
    uint32_t n;
    if (u32(r, &n) < 0) return NULL;
    Py_ssize_t start = take(r, n);
    if (start < 0) return NULL;
    return utf8(r, start, n);
}

static PyObject *
raw(R *r)
{
    Py_ssize_t at = take(r, 8);
    if (at < 0) return NULL;
    uint64_t n = le64(r->buf + at);
    Py_ssize_t start = take(r, n);
    if (start < 0) return NULL;
    if (charge(r, 40 + (int64_t)n) < 0) return NULL;
    return PyBytes_FromStringAndSize((const char *)r->buf + start, (Py_ssize_t)n);
}

/* -- values ------------------------------------------------------------------------------------- */

static PyObject *read_value(R *r, int depth);
static int configure(void);

/* One value of a row (a list's items, a dict's keys and values...), as _values reads it: short
 * strs, floats and small ints inline, with the inline checks' own messages. */
static inline PyObject *
element(R *r, int depth)
{
    Py_ssize_t pos = r->pos, end = r->end;
    int tag = pos < end ? r->buf[pos] : -1;
    if (tag == T_STR) {
        Py_ssize_t start = pos + 5;
        if (start > end) {
            PyErr_Format(decode_error, "a str needs its length at offset %zd", pos + 1);
            return NULL;
        }
        int64_t stop = (int64_t)start + le32(r->buf + pos + 1);
        if (stop > end) {
            PyErr_Format(decode_error, "a str of %lld bytes at offset %zd, past the end",
                         (long long)(stop - start), start);
            return NULL;
        }
        r->pos = (Py_ssize_t)stop;
        return utf8(r, start, (Py_ssize_t)stop - start);
    }
    if (tag == T_FLOAT && pos + 9 <= end) {
        r->pos = pos + 9;
        if (charge(r, 32) < 0) return NULL;
        return PyFloat_FromDouble(f64(r->buf + pos + 1));
    }
    if (tag == T_SMALL_INT && pos + 2 <= end) {
        r->pos = pos + 2;
        return PyLong_FromLong(r->buf[pos + 1]);
    }
    return read_value(r, depth + 1);
}

/* Read n values into out (n slots, all set on success; on failure, those read are released). */
static int
elements(R *r, Py_ssize_t n, int depth, PyObject **out)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        out[i] = element(r, depth);
        if (out[i] == NULL) {
            for (Py_ssize_t j = 0; j < i; j++) Py_DECREF(out[j]);
            return -1;
        }
    }
    return 0;
}

static void
release_all(PyObject **items, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) Py_DECREF(items[i]);
    PyMem_Free(items);
}

static PyObject **
new_items(Py_ssize_t n)
{
    PyObject **items = PyMem_Malloc(sizeof(PyObject *) * (size_t)(n > 0 ? n : 1));
    if (items == NULL) PyErr_NoMemory();
    return items;
}

/* -- hashing costs ------------------------------------------------------------------------------ */

static inline int64_t
sat_add(int64_t a, int64_t b)
{
    int64_t s = a + b;
    return s > COST_CAP ? COST_CAP : s;
}

static int
as_cost(PyObject *v, int64_t *out)
{
    int overflow = 0;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (x == -1 && PyErr_Occurred()) return -1;
    *out = overflow || x > COST_CAP ? COST_CAP : x;
    return 0;
}

/* The (hash, compare) cost of value, as Reader._cost estimates it. */
static int
cost(R *r, PyObject *value, int64_t *h, int64_t *c)
{
    if (PyDict_GET_SIZE(r->costs) > 0) {
        PyObject *key = PyLong_FromVoidPtr(value);
        if (key == NULL) return -1;
        PyObject *entry = PyDict_GetItemWithError(r->costs, key);
        Py_DECREF(key);
        if (entry == NULL && PyErr_Occurred()) return -1;
        if (entry != NULL && PyTuple_CheckExact(entry) && PyTuple_GET_SIZE(entry) == 3
            && PyTuple_GET_ITEM(entry, 0) == value) {
            if (as_cost(PyTuple_GET_ITEM(entry, 1), h) < 0 || as_cost(PyTuple_GET_ITEM(entry, 2), c) < 0) return -1;
            return 0;
        }
    }
    PyTypeObject *kind = Py_TYPE(value);
    *h = *c = 1;
    if (kind == &PyLong_Type) {
        int overflow = 0;
        (void)PyLong_AsLongLongAndOverflow(value, &overflow);
        if (!overflow) return 0; /* below 2**63: at most 7 bytes by bit_length() // 8 */
        PyObject *bits = PyObject_CallMethodNoArgs(value, s_bit_length);
        if (bits == NULL) return -1;
        int64_t nbits;
        int rc = as_cost(bits, &nbits);
        Py_DECREF(bits);
        if (rc < 0) return -1;
        int64_t size = nbits / 8;
        if (size > 8) {
            *h = 1 + size / 64;
            *c = 1 + size * size / 100;
        }
    } else if (kind == &PyUnicode_Type) {
        *h = *c = 1 + PyUnicode_GET_LENGTH(value) / 256;
    } else if (kind == &PyBytes_Type) {
        *h = *c = 1 + PyBytes_GET_SIZE(value) / 256;
    } else if (kind == &PyTuple_Type) {
        *h = *c = 1 + PyTuple_GET_SIZE(value);
    }
    return 0;
}

static int
record(R *r, PyObject *value, int64_t h, int64_t c)
{
    if (h == 1 && c == 1) return 0;
    if (charge(r, RECORD) < 0) return -1;
    PyObject *key = PyLong_FromVoidPtr(value);
    PyObject *entry = key ? Py_BuildValue("(OLL)", value, (long long)h, (long long)c) : NULL;
    int rc = entry ? PyDict_SetItem(r->costs, key, entry) : -1;
    Py_XDECREF(key);
    Py_XDECREF(entry);
    return rc;
}

static void
not_hashable(const char *what)
{
    if (!PyErr_ExceptionMatches(PyExc_TypeError)) return;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    PyErr_Format(decode_error, "a %s is not hashable (%S)", what, value);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
}

#define COLLISIONS_ALLOWED 16

/* Sort n hashes (as unsigned, only equal ones need to end up together) by LSD radix, a byte a pass:
 * linear in n whatever the hashes, where a comparison sort of 100,000 took longer than building the
 * dict, and a hash table of them could be made to probe quadratically by hashes crafted for it. */
static void
sort_hashes(uint64_t *a, uint64_t *tmp, Py_ssize_t n)
{
    for (int shift = 0; shift < 64; shift += 8) {
        Py_ssize_t starts[257] = {0};
        for (Py_ssize_t i = 0; i < n; i++) starts[((a[i] >> shift) & 255) + 1]++;
        for (int b = 0; b < 256; b++) starts[b + 1] += starts[b];
        for (Py_ssize_t i = 0; i < n; i++) tmp[starts[(a[i] >> shift) & 255]++] = a[i];
        uint64_t *swap = a;
        a = tmp;
        tmp = swap;
    }
    /* Eight passes: the sorted hashes are back in the first array. */
}

/* Refuse keys too dear to hash, as Reader._hashable does, with the same charges in the same order
 * and the same messages: str keys cost one unit each (their hashes are salted per process); others
 * are charged their estimated hashing cost twice, hashed, and refused if more than 16 share a hash
 * with another; each group sharing one is charged the comparisons inserting it makes.
 * Done here, not by calling the Python side: a dict of 100,000 int -> float decodes in 0.97x
 * pickle.loads's time, 3.0x through Python (benchmarks/codec.py's int_keys_state, timed against
 * pickle.loads in 7 alternating rounds, median). */
static int
hashable(R *r, PyObject **keys, Py_ssize_t n, Py_ssize_t stride)
{
    int all_str = 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!PyUnicode_CheckExact(keys[i * stride])) {
            all_str = 0;
            break;
        }
    }
    if (all_str) return spend_hashing(r, n);
    int64_t total = 0, h, c;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (cost(r, keys[i * stride], &h, &c) < 0) return -1;
        total = sat_add(total, h);
    }
    if (spend_hashing(r, 2 * total) < 0) return -1; /* hashed here, then by the set or dict */
    /* What the reference's list of hashes and set of them take, given back once checked. */
    int64_t temporary = list_bytes(n) + 32 * (int64_t)n + set_bytes(n);
    if (charge(r, temporary) < 0) return -1;
    uint64_t *hashes = PyMem_Malloc(sizeof(uint64_t) * 3 * (size_t)(n > 0 ? n : 1));
    if (hashes == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    uint64_t *sorted = hashes + n, *tmp = hashes + 2 * n;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_hash_t x = PyObject_Hash(keys[i * stride]);
        if (x == -1 && PyErr_Occurred()) {
            not_hashable("dict key or set element");
            PyMem_Free(hashes);
            return -1;
        }
        hashes[i] = sorted[i] = (uint64_t)x;
    }
    sort_hashes(sorted, tmp, n);
    Py_ssize_t shared = 0;
    for (Py_ssize_t i = 1; i < n; i++) shared += sorted[i] == sorted[i - 1];
    if (shared > COLLISIONS_ALLOWED) {
        PyErr_Format(decode_error, "%zd keys share a hash with another (crafted to be slow)", shared);
        PyMem_Free(hashes);
        return -1;
    }
    /* At most 16 groups: each is found by a pass over the keys' hashes. */
    for (Py_ssize_t i = 1; shared > 0 && i < n; i++) {
        if (sorted[i] != sorted[i - 1] || (i > 1 && sorted[i - 2] == sorted[i])) continue;
        int64_t members = 0, dearest = 0;
        for (Py_ssize_t j = 0; j < n; j++) {
            if (hashes[j] != sorted[i]) continue;
            if (cost(r, keys[j * stride], &h, &c) < 0) {
                PyMem_Free(hashes);
                return -1;
            }
            members++;
            if (c > dearest) dearest = c;
        }
        int64_t pairs = members * (members - 1) / 2;
        if (spend_hashing(r, dearest > COST_CAP / pairs ? COST_CAP : pairs * dearest) < 0) {
            PyMem_Free(hashes);
            return -1;
        }
    }
    PyMem_Free(hashes);
    refund(r, temporary);
    return 0;
}

/* -- the builders ------------------------------------------------------------------------------- */

static PyObject *
build_list(R *r, int depth)
{
    PyObject *value = PyList_New(0);
    if (value == NULL) return NULL;
    long saved;
    uint32_t n;
    Py_ssize_t index = slot(r, value);
    if (index < 0 || enter(r, depth, &saved) < 0 || count(r, 1, &n) < 0
        || charge(r, SLOT + list_bytes(n)) < 0)
        goto fail;
    for (uint32_t i = 0; i < n; i++) {
        PyObject *item = element(r, depth);
        if (item == NULL) goto fail;
        int rc = PyList_Append(value, item);
        Py_DECREF(item);
        if (rc < 0) goto fail;
    }
    if (leave(r, index, depth, saved) < 0) goto fail;
    return value;
fail:
    Py_DECREF(value);
    return NULL;
}

static PyObject *
build_packed(R *r, int depth, int floats)
{
    uint32_t n;
    if (count(r, 8, &n) < 0) return NULL;
    if (charge(r, SLOT + 160 + (floats ? 40 : 48) * (int64_t)n) < 0) return NULL;
    Py_ssize_t start = take(r, 8 * (uint64_t)n);
    if (start < 0) return NULL;
    PyObject *value = PyList_New(n);
    if (value == NULL) return NULL;
    const unsigned char *p = r->buf + start;
    for (uint32_t i = 0; i < n; i++, p += 8) {
        PyObject *item = floats ? PyFloat_FromDouble(f64(p)) : PyLong_FromLongLong((long long)le64(p));
        if (item == NULL) goto fail;
        PyList_SET_ITEM(value, i, item);
    }
    Py_ssize_t index = slot(r, value);
    if (index < 0) goto fail;
    if (depth >= MAX_DEPTH) {
        PyErr_Format(decode_error, "nesting deeper than %d levels", MAX_DEPTH);
        goto fail;
    }
    if (set_height(r, index, 1) < 0) goto fail;
    if (depth + 1 > r->deepest) r->deepest = depth + 1;
    return value;
fail:
    Py_DECREF(value);
    return NULL;
}

static PyObject *
build_tuple(R *r, int depth)
{
    long saved;
    uint32_t n;
    Py_ssize_t index = slot(r, pending);
    if (index < 0 || enter(r, depth, &saved) < 0 || count(r, 1, &n) < 0) return NULL;
    int64_t temporary = list_bytes(n);
    if (charge(r, SLOT + 56 + 8 * (int64_t)n + temporary) < 0) return NULL;
    PyObject *value = PyTuple_New(n);
    if (value == NULL) return NULL;
    for (uint32_t i = 0; i < n; i++) {
        PyObject *item = element(r, depth);
        if (item == NULL) goto fail;
        PyTuple_SET_ITEM(value, i, item);
    }
    refund(r, temporary);
    if (leave(r, index, depth, saved) < 0 || set_memo(r, index, value) < 0) goto fail;
    int64_t hashing = 1, comparing = 1;
    for (uint32_t i = 0; i < n; i++) {
        int64_t h, c;
        if (cost(r, PyTuple_GET_ITEM(value, i), &h, &c) < 0) goto fail;
        hashing = sat_add(hashing, h);
        comparing = sat_add(comparing, c);
    }
    if ((hashing != 1 + (int64_t)n || comparing != 1 + (int64_t)n) && record(r, value, hashing, comparing) < 0)
        goto fail;
    return value;
fail:
    Py_DECREF(value);
    return NULL;
}

static PyObject *
build_set(R *r, int depth, int frozen)
{
    PyObject *value = frozen ? PyFrozenSet_New(NULL) : PySet_New(NULL);
    if (value == NULL) return NULL;
    PyObject **items = NULL;
    long saved;
    uint32_t n = 0;
    Py_ssize_t index = slot(r, frozen ? pending : value);
    if (index < 0 || enter(r, depth, &saved) < 0 || count(r, 1, &n) < 0) goto fail;
    int64_t temporary = list_bytes(n);
    if (charge(r, SLOT + set_bytes(n) + temporary) < 0) goto fail;
    if ((items = new_items(n)) == NULL) goto fail;
    if (elements(r, n, depth, items) < 0) {
        PyMem_Free(items);
        items = NULL;
        goto fail;
    }
    if (hashable(r, items, n, 1) < 0) goto fail_items;
    for (uint32_t i = 0; i < n; i++) {
        if (PySet_Add(value, items[i]) < 0) {
            not_hashable("set element");
            goto fail_items;
        }
    }
    if (PySet_GET_SIZE(value) != (Py_ssize_t)n) {
        PyErr_SetString(decode_error, "a set element is there twice");
        goto fail_items;
    }
    if (!frozen) refund(r, temporary);
    if (leave(r, index, depth, saved) < 0) goto fail_items;
    if (frozen) {
        if (set_memo(r, index, value) < 0) goto fail_items;
        int64_t total = 1;
        for (uint32_t i = 0; i < n; i++) {
            int64_t h, c;
            if (cost(r, items[i], &h, &c) < 0) goto fail_items;
            total = sat_add(total, sat_add(h, c));
        }
        if (record(r, value, 1, total) < 0) goto fail_items;
        refund(r, temporary);
    }
    release_all(items, n);
    return value;
fail_items:
    release_all(items, n);
fail:
    Py_DECREF(value);
    return NULL;
}

static PyObject *
build_dict(R *r, int depth)
{
    PyObject *value = PyDict_New();
    if (value == NULL) return NULL;
    PyObject **items = NULL;
    long saved;
    uint32_t n = 0;
    Py_ssize_t index = slot(r, value);
    if (index < 0 || enter(r, depth, &saved) < 0 || count(r, 2, &n) < 0) goto fail;
    int64_t temporary = list_bytes(2 * (int64_t)n) + list_bytes(n);
    if (charge(r, SLOT + dict_header + dict_bytes(n) + temporary) < 0) goto fail;
    if ((items = new_items(2 * (Py_ssize_t)n)) == NULL) goto fail;
    if (elements(r, 2 * (Py_ssize_t)n, depth, items) < 0) {
        PyMem_Free(items);
        items = NULL;
        goto fail;
    }
    if (hashable(r, items, n, 2) < 0) goto fail_items;
    for (uint32_t i = 0; i < n; i++) {
        if (PyDict_SetItem(value, items[2 * i], items[2 * i + 1]) < 0) {
            not_hashable("dict key");
            goto fail_items;
        }
    }
    if (PyDict_GET_SIZE(value) != (Py_ssize_t)n) {
        PyErr_SetString(decode_error, "a dict key is there twice");
        goto fail_items;
    }
    refund(r, temporary);
    if (leave(r, index, depth, saved) < 0) goto fail_items;
    release_all(items, 2 * (Py_ssize_t)n);
    return value;
fail_items:
    release_all(items, 2 * (Py_ssize_t)n);
fail:
    Py_DECREF(value);
    return NULL;
}

static PyObject *
build_big_int(R *r)
{
    uint32_t n;
    if (u32(r, &n) < 0) return NULL;
    if (n > MAX_INT_BYTES) {
        PyErr_Format(decode_error, "an int of %lu bytes (at most %d)", (unsigned long)n, MAX_INT_BYTES);
        return NULL;
    }
    if (charge(r, 72 + 3 * (int64_t)n) < 0) return NULL;
    Py_ssize_t start = take(r, n);
    if (start < 0) return NULL;
    PyObject *raw_bytes = PyBytes_FromStringAndSize((const char *)r->buf + start, n);
    if (raw_bytes == NULL) return NULL;
    PyObject *args = Py_BuildValue("(NO)", raw_bytes, s_little);
    PyObject *kwargs = args ? Py_BuildValue("{s:O}", "signed", Py_True) : NULL;
    PyObject *from_bytes = kwargs ? PyObject_GetAttr((PyObject *)&PyLong_Type, s_from_bytes) : NULL;
    PyObject *value = from_bytes ? PyObject_Call(from_bytes, args, kwargs) : NULL;
    Py_XDECREF(args);
    Py_XDECREF(kwargs);
    Py_XDECREF(from_bytes);
    return value;
}

/* A tag built in Python: the state goes back to the decoder object, the builder runs, and it is
 * read back, whether the builder returned or raised. */
static PyObject *
callback(R *r, int tag, int depth)
{
    if (ensure_dec(r) < 0 || store(r) < 0) return NULL;
    PyObject *args[2] = {r->dec, PyLong_FromLong(depth)};
    if (args[1] == NULL) return NULL;
    PyObject *value = PyObject_Vectorcall(PyList_GET_ITEM(readers, tag), args, 2, NULL);
    Py_DECREF(args[1]);
    if (value == NULL) {
        PyObject *type, *exc, *tb;
        PyErr_Fetch(&type, &exc, &tb);
        if (load_dynamic(r) < 0) PyErr_Clear();
        PyErr_Restore(type, exc, tb);
        return NULL;
    }
    if (load_dynamic(r) < 0) {
        Py_DECREF(value);
        return NULL;
    }
    return value;
}

static PyObject *
read_value(R *r, int depth)
{
    if (r->pos >= r->end) {
        PyErr_SetString(decode_error, "the payload ends before its value");
        return NULL;
    }
    int tag = r->buf[r->pos++];
    Py_ssize_t at;
    switch (tag) {
    case T_NONE: Py_RETURN_NONE;
    case T_TRUE: Py_RETURN_TRUE;
    case T_FALSE: Py_RETURN_FALSE;
    case T_SMALL_INT:
        if ((at = take(r, 1)) < 0) return NULL;
        return PyLong_FromLong(r->buf[at]);
    case T_INT64:
        if (charge(r, 32) < 0 || (at = take(r, 8)) < 0) return NULL;
        return PyLong_FromLongLong((long long)le64(r->buf + at));
    case T_BIG_INT: return build_big_int(r);
    case T_FLOAT:
        if (charge(r, 32) < 0 || (at = take(r, 8)) < 0) return NULL;
        return PyFloat_FromDouble(f64(r->buf + at));
    case T_COMPLEX:
        if (charge(r, 32) < 0 || (at = take(r, 16)) < 0) return NULL;
        return PyComplex_FromDoubles(f64(r->buf + at), f64(r->buf + at + 8));
    case T_STR: return text(r);
    case T_BYTES: return raw(r);
    case T_LONG_STR:
    case T_LONG_BYTES: {
        if (charge(r, SLOT) < 0) return NULL;
        Py_ssize_t index = slot(r, pending);
        if (index < 0) return NULL;
        PyObject *value = tag == T_LONG_STR ? text(r) : raw(r);
        if (value != NULL && set_memo(r, index, value) < 0) Py_CLEAR(value);
        return value;
    }
    case T_BYTEARRAY: {
        PyObject *value = PyByteArray_FromStringAndSize(NULL, 0);
        if (value == NULL) return NULL;
        PyObject *bytes = NULL;
        if (slot(r, value) < 0 || (bytes = raw(r)) == NULL
            || charge(r, SLOT + 64 + PyBytes_GET_SIZE(bytes)) < 0
            || PyByteArray_Resize(value, PyBytes_GET_SIZE(bytes)) < 0) {
            Py_XDECREF(bytes);
            Py_DECREF(value);
            return NULL;
        }
        memcpy(PyByteArray_AS_STRING(value), PyBytes_AS_STRING(bytes), (size_t)PyBytes_GET_SIZE(bytes));
        Py_DECREF(bytes);
        return value;
    }
    case T_LIST: return build_list(r, depth);
    case T_FLOATS: return build_packed(r, depth, 1);
    case T_INT64S: return build_packed(r, depth, 0);
    case T_TUPLE: return build_tuple(r, depth);
    case T_SET: return build_set(r, depth, 0);
    case T_FROZENSET: return build_set(r, depth, 1);
    case T_DICT: return build_dict(r, depth);
    case T_REF: return ref(r, depth);
    default: return callback(r, tag, depth);
    }
}

/* -- the module --------------------------------------------------------------------------------- */

static PyObject *
cdecode_read(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "read(decoder, depth)");
        return NULL;
    }
    if (configure() < 0) return NULL;
    long depth = PyLong_AsLong(args[1]);
    if (depth == -1 && PyErr_Occurred()) return NULL;
    if (depth < 0 || depth > MAX_DEPTH + 1) {
        PyErr_SetString(PyExc_ValueError, "depth out of range");
        return NULL;
    }
    R r;
    if (load(&r, args[0]) < 0) return NULL;
    /* No cyclic GC while a payload is built: each container also gets a memo slot and, for
     * non-str keys, a cost record, so the collector ran about twice as often as under pickle and
     * walked every object of the process each full pass (1,000 early-stopping states decoded
     * beside 250,000 live objects: 3.0 ms, 0.85 ms without; pickle.loads 0.76 ms). Memory stays
     * bounded by the allowance; whatever cycles a failed read leaves are collected after. */
    int gc_was_on = PyGC_Disable();
    PyObject *value = read_value(&r, (int)depth);
    if (gc_was_on) PyGC_Enable();
    if (store(&r) < 0) Py_CLEAR(value);
    release(&r);
    return value;
}

/* Fetch, once, what the Python side gives: callstate._encoding._decoder.compiled_setup(). */
static int
configure(void)
{
    if (readers != NULL) return 0;
    PyObject *mod = PyImport_ImportModule("callstate._encoding._decoder");
    PyObject *t = mod ? PyObject_CallMethod(mod, "compiled_setup", NULL) : NULL;
    Py_XDECREF(mod);
    if (t == NULL) return -1;
    PyObject *new_class, *new_readers, *new_pending, *new_error, *new_reference;
    long long header;
    if (!PyArg_ParseTuple(t, "OO!OOLO", &new_class, &PyList_Type, &new_readers, &new_pending, &new_error,
                          &header, &new_reference)
        || PyList_GET_SIZE(new_readers) != 256) {
        Py_DECREF(t);
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "compiled_setup() gave no 256 builders");
        return -1;
    }
    /* A copy: the table cannot change under the decoder. */
    PyObject *copy = PyList_GetSlice(new_readers, 0, 256);
    if (copy == NULL) {
        Py_DECREF(t);
        return -1;
    }
    Py_INCREF(new_class);
    decoder_class = new_class;
    Py_INCREF(new_pending);
    pending = new_pending;
    Py_INCREF(new_error);
    decode_error = new_error;
    Py_INCREF(new_reference);
    reference = new_reference;
    dict_header = header;
    readers = copy;
    Py_DECREF(t);
    return 0;
}

/* Reader.decode, for the usual payload (an entry of a file: no out-of-band buffer, the read's
 * allowance): the same charges, checks and messages, read with no Python decoder object until a tag
 * needs a Python builder. Each entry made a decoder object through Python and synced it through a
 * dozen attribute reads and writes: benchmarks/codec.py's early_stopping state decoded in 3.4x
 * pickle.loads's time, 1.43x now (timeit with a read's allowance, median of 5 alternating rounds). */
#define DECODER 1024 /* Reader's _DECODER: its bookkeeping, charged while it reads */

static PyObject *
decode_whole(PyObject *call_args, PyObject *kwargs, PyObject *stream, PyObject *allowance)
{
    R r;
    memset(&r, 0, sizeof(r));
    r.call_args = call_args;
    r.call_kwargs = kwargs;
    Py_INCREF(stream);
    r.data = stream;
    Py_INCREF(allowance);
    r.allowance = allowance;
    r.memo = PyList_New(0);
    r.heights = r.memo ? PyByteArray_FromStringAndSize(NULL, 0) : NULL;
    r.costs = r.heights ? PyDict_New() : NULL;
    if (r.costs == NULL) {
        release(&r);
        return NULL;
    }
    r.buf = (const unsigned char *)PyBytes_AS_STRING(stream);
    r.end = PyBytes_GET_SIZE(stream);
    if (load_dynamic(&r) < 0) {
        release(&r);
        return NULL;
    }
    PyObject *value = NULL;
    if (charge(&r, DECODER) == 0) {
        int gc_was_on = PyGC_Disable(); /* see cdecode_read */
        value = read_value(&r, 0);
        if (gc_was_on) PyGC_Enable();
    }
    if (value != NULL && r.pos != r.end) {
        PyErr_Format(decode_error, "%zd bytes after the value", r.end - r.pos);
        Py_CLEAR(value);
    }
    if (value != NULL) /* the decoder's bookkeeping goes with it; what it built stays charged */
        refund(&r, DECODER + SLOT * (int64_t)PyList_GET_SIZE(r.memo) + RECORD * (int64_t)PyDict_GET_SIZE(r.costs));
    if (store(&r) < 0) Py_CLEAR(value);
    release(&r);
    return value;
}

static PyObject *
cdecode_decode(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwargs)
{
    if (configure() < 0) return NULL;
    /* Streams that are not bytes (bytearray slices are bytearrays) are the reference's. */
    if (PyTuple_GET_SIZE(args) < 1 || !PyBytes_CheckExact(PyTuple_GET_ITEM(args, 0)))
        return PyObject_Call(reference, args, kwargs);
    Py_ssize_t n = PyTuple_GET_SIZE(args);
    PyObject *call_args = PyTuple_New(n + 1);
    if (call_args == NULL) return NULL;
    Py_INCREF(read_function);
    PyTuple_SET_ITEM(call_args, 0, read_function);
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_INCREF(PyTuple_GET_ITEM(args, i));
        PyTuple_SET_ITEM(call_args, i + 1, PyTuple_GET_ITEM(args, i));
    }
    PyObject *value = NULL;
    PyObject *buffers = n == 2 ? PyTuple_GET_ITEM(args, 1) : NULL;
    PyObject *allowance = kwargs != NULL ? PyDict_GetItemWithError(kwargs, s_allowance) : NULL;
    if (allowance == NULL && PyErr_Occurred()) goto done;
    int bound_given = kwargs != NULL && PyDict_GetItemWithError(kwargs, s_bound_memory) != NULL;
    if (PyErr_Occurred()) goto done;
    if (buffers != NULL && ((PyList_CheckExact(buffers) && PyList_GET_SIZE(buffers) == 0)
                            || (PyTuple_CheckExact(buffers) && PyTuple_GET_SIZE(buffers) == 0))
        && allowance != NULL && allowance != Py_None && PyDict_GET_SIZE(kwargs) == 1 + bound_given) {
        value = decode_whole(call_args, kwargs, PyTuple_GET_ITEM(args, 0), allowance);
        goto done;
    }
    PyObject *dec = PyObject_Call(decoder_class, call_args, kwargs);
    if (dec == NULL) goto done;
    value = PyObject_CallMethod(dec, "decode", NULL);
    Py_DECREF(dec);
done:
    Py_DECREF(call_args);
    return value;
}

static PyObject *
cdecode_sizes(PyObject *Py_UNUSED(module), PyObject *arg)
{
    long long n = PyLong_AsLongLong(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (n < 0 || n > (INT64_C(1) << 36)) {
        PyErr_SetString(PyExc_ValueError, "n out of range");
        return NULL;
    }
    return Py_BuildValue("(LLL)", (long long)list_bytes(n), (long long)set_bytes(n), (long long)dict_bytes(n));
}

static PyMethodDef methods[] = {
    {"read", (PyCFunction)(void (*)(void))cdecode_read, METH_FASTCALL,
     "read(decoder, depth): read the value at decoder.pos, as Decoder._read does."},
    {"decode", (PyCFunction)(void (*)(void))cdecode_decode, METH_VARARGS | METH_KEYWORDS,
     "decode(stream, buffers, *, bound_memory=True, allowance=None): as callstate._encoding._decoder.decode."},
    {"sizes", cdecode_sizes, METH_O,
     "sizes(n): (list_bytes(n), set_bytes(n), dict_bytes(n)) as charged here (for the tests)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "callstate._encoding._cdecode",
    "The data codec's decoder of plain data, compiled (see callstate._encoding._decoder).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__cdecode(void)
{
    init_steps();
#define INTERN(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL
    INTERN(s_data, "data");
    INTERN(s_end, "end");
    INTERN(s_pos, "pos");
    INTERN(s_memo, "memo");
    INTERN(s_heights, "heights");
    INTERN(s_costs, "costs");
    INTERN(s_allowance, "allowance");
    INTERN(s_deepest, "deepest");
    INTERN(s_memory, "memory");
    INTERN(s_hashing, "hashing");
    INTERN(s_oversized, "_oversized");
    INTERN(s_spend_hashing, "_spend_hashing");
    INTERN(s_bound_memory, "bound_memory");
    INTERN(s_from_bytes, "from_bytes");
    INTERN(s_little, "little");
    INTERN(s_bit_length, "bit_length");
#undef INTERN
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    read_function = PyObject_GetAttrString(m, "read");
    if (read_function == NULL) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
