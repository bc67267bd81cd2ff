/* The data codec's encoder, compiled: the same bytes as callstate/_encoding/_encoder.py.
 *
 * Plain data (None, bool, int, float, complex, str, bytes, bytearray, list, tuple, set, frozenset,
 * dict, OrderedDict, Counter, defaultdict, deque) is written here, with the memo, the nesting
 * heights and the out-of-band buffers of the whole state. Every other value is the Python half's
 * (the functions at the end of _encoder.py): a value with no memo slot comes back as its bytes, an
 * array, tensor or registered object gets its memo slot here and its head from Python. Errors are
 * the reference's: Unsupported and ToDataError with its messages, raised by the same checks in the
 * same order. Built against the limited API when CALLSTATE_LIMITED_API is defined (see setup.py).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#ifdef Py_LIMITED_API
#define LIST_SIZE(o) PyList_Size(o)
#define LIST_ITEM(o, i) PyList_GetItem((o), (i))
#define TUPLE_SIZE(o) PyTuple_Size(o)
#define TUPLE_ITEM(o, i) PyTuple_GetItem((o), (i))
#define FLOAT_VALUE(o) PyFloat_AsDouble(o)
#define BYTES_DATA(o) PyBytes_AsString(o)
#define BYTES_SIZE(o) PyBytes_Size(o)
#define STR_LENGTH(o) PyUnicode_GetLength(o)
#else
#define LIST_SIZE(o) PyList_GET_SIZE(o)
#define LIST_ITEM(o, i) PyList_GET_ITEM((o), (i))
#define TUPLE_SIZE(o) PyTuple_GET_SIZE(o)
#define TUPLE_ITEM(o, i) PyTuple_GET_ITEM((o), (i))
#define FLOAT_VALUE(o) PyFloat_AS_DOUBLE(o)
#define BYTES_DATA(o) PyBytes_AS_STRING(o)
#define BYTES_SIZE(o) PyBytes_GET_SIZE(o)
#define STR_LENGTH(o) PyUnicode_GET_LENGTH(o)
#endif

/* The tags of callstate/_encoding/_tags.py that this file writes itself. */
enum {
    T_NONE = 'N', T_TRUE = 'T', T_FALSE = 'F', T_SMALL_INT = 'j', T_INT64 = 'i', T_BIG_INT = 'I',
    T_FLOAT = 'f', T_COMPLEX = 'c', T_STR = 's', T_LONG_STR = 'S', T_BYTES = 'y', T_LONG_BYTES = 'Y',
    T_BYTEARRAY = 'a', T_LIST = 'l', T_FLOATS = 'L', T_INT64S = 'K', T_TUPLE = 't', T_SET = 'e',
    T_FROZENSET = 'E', T_DICT = 'd', T_ORDERED_DICT = 'o', T_COUNTER = 'C', T_DEFAULTDICT = 'D',
    T_DEQUE = 'q', T_REF = 'r', T_OUT_OF_BAND = 1,
};
#define PACKED_MIN 8
/* The kinds other() returns (LEAF, ARRAY, REGISTERED_TYPE in _encoder.py). */
enum { K_LEAF = 0, K_ARRAY = 1, K_REGISTERED = 2 };

/* Read from _tags and _encoder when the module is imported, so there is one definition of each. */
static long max_depth, memo_min_len, max_int_bytes;
static PyObject *Unsupported, *U32_pack, *other_fn, *array_data_fn, *registered_data_fn,
    *factory_code_fn, *contains_itself_fn;
static PyObject *OrderedDict_type, *Counter_type, *defaultdict_type, *deque_type;

/* -- the output ------------------------------------------------------------------------------- */

typedef struct {
    PyObject *key; /* NULL: empty */
    Py_ssize_t index;
} Slot;

typedef struct {
    char *out;
    Py_ssize_t len, cap;
    /* The memo: object -> slot number, an open-addressing table keyed by address (the object is
       kept alive in objs, so no address is reused meanwhile), and per slot its height and whether
       it is being written (a tuple, frozenset or registered object: a reference to it is refused). */
    Slot *table;
    size_t mask;
    PyObject **objs;
    int *heights;
    char *building;
    Py_ssize_t count, slots;
    PyObject *buffers;
    long deepest;
} Enc;

static int grow(Enc *e, Py_ssize_t need) {
    if (need > PY_SSIZE_T_MAX - e->len) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t cap = e->cap ? e->cap : 256;
    while (cap < e->len + need) {
        if (cap > PY_SSIZE_T_MAX / 2) {
            cap = e->len + need;
            break;
        }
        cap *= 2;
    }
    char *out = PyMem_Realloc(e->out, (size_t)cap);
    if (out == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    e->out = out;
    e->cap = cap;
    return 0;
}

#define RESERVE(e, n) (((e)->cap - (e)->len >= (Py_ssize_t)(n)) ? 0 : grow((e), (Py_ssize_t)(n)))

static inline void le32(char *p, uint32_t v) {
    p[0] = (char)v; p[1] = (char)(v >> 8); p[2] = (char)(v >> 16); p[3] = (char)(v >> 24);
}

static inline void le64(char *p, uint64_t v) {
    le32(p, (uint32_t)v);
    le32(p + 4, (uint32_t)(v >> 32));
}

static inline void f64(char *p, double d) {
    uint64_t bits;
    memcpy(&bits, &d, 8);
    le64(p, bits);
}

static int put(Enc *e, const void *data, Py_ssize_t n) {
    if (RESERVE(e, n) < 0)
        return -1;
    if (n)
        memcpy(e->out + e->len, data, (size_t)n);
    e->len += n;
    return 0;
}

static int put_byte(Enc *e, int b) {
    if (RESERVE(e, 1) < 0)
        return -1;
    e->out[e->len++] = (char)b;
    return 0;
}

/* A tag (none if tag < 0) and a u32: the reference's _TAG_U32.pack or _U32.pack, whose
   struct.error is raised for n >= 2**32. */
static int put_u32(Enc *e, int tag, Py_ssize_t n) {
    if ((uint64_t)n > UINT32_MAX) {
        PyObject *r = PyObject_CallFunction(U32_pack, "in", 0, n);
        Py_XDECREF(r);
        if (r != NULL)
            PyErr_SetString(PyExc_OverflowError, "a count of 2**32 or more");
        return -1;
    }
    if (RESERVE(e, 5) < 0)
        return -1;
    if (tag >= 0)
        e->out[e->len++] = (char)tag;
    le32(e->out + e->len, (uint32_t)n);
    e->len += 4;
    return 0;
}

static int put_u64(Enc *e, int tag, uint64_t n) {
    if (RESERVE(e, 9) < 0)
        return -1;
    e->out[e->len] = (char)tag;
    le64(e->out + e->len + 1, n);
    e->len += 9;
    return 0;
}

static int put_float(Enc *e, double d) {
    if (RESERVE(e, 9) < 0)
        return -1;
    e->out[e->len] = T_FLOAT;
    f64(e->out + e->len + 1, d);
    e->len += 9;
    return 0;
}

static int put_bytes_object(Enc *e, PyObject *b) {
    char *data = BYTES_DATA(b);
    if (data == NULL)
        return -1;
    return put(e, data, BYTES_SIZE(b));
}

/* -- errors ----------------------------------------------------------------------------------- */

static int too_deep(void) {
    PyObject *msg = PyUnicode_FromFormat("nesting deeper than %ld levels", max_depth);
    if (msg != NULL) {
        PyErr_SetObject(Unsupported, msg);
        Py_DECREF(msg);
    }
    return -1;
}

/* -- the memo (Encoder._ref, _enter and _leave) ----------------------------------------------- */

static inline size_t hash_of(PyObject *obj) {
    uint64_t x = (uint64_t)(uintptr_t)obj;
    x ^= x >> 4;
    x *= 0x9E3779B97F4A7C15ull;
    return (size_t)(x >> 17);
}

static int memo_grow(Enc *e) {
    size_t size = e->table ? (e->mask + 1) * 2 : 64;
    Slot *table = PyMem_Calloc(size, sizeof(Slot));
    if (table == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    if (e->table) {
        for (size_t i = 0; i <= e->mask; i++) {
            if (e->table[i].key == NULL)
                continue;
            size_t j = hash_of(e->table[i].key) & (size - 1);
            while (table[j].key != NULL)
                j = (j + 1) & (size - 1);
            table[j] = e->table[i];
        }
        PyMem_Free(e->table);
    }
    e->table = table;
    e->mask = size - 1;
    return 0;
}

static int slots_grow(Enc *e) {
    Py_ssize_t slots = e->slots ? e->slots * 2 : 64;
    PyObject **objs = PyMem_Realloc(e->objs, (size_t)slots * sizeof(PyObject *));
    if (objs == NULL)
        return PyErr_NoMemory(), -1;
    e->objs = objs;
    int *heights = PyMem_Realloc(e->heights, (size_t)slots * sizeof(int));
    if (heights == NULL)
        return PyErr_NoMemory(), -1;
    e->heights = heights;
    char *building = PyMem_Realloc(e->building, (size_t)slots);
    if (building == NULL)
        return PyErr_NoMemory(), -1;
    e->building = building;
    e->slots = slots;
    return 0;
}

/* Write a reference if obj was met before (return 1); else give it a memo slot, *index (return 0). */
static int ref(Enc *e, PyObject *obj, long depth, Py_ssize_t *index) {
    if (e->table == NULL || (size_t)(e->count + 1) * 3 > (e->mask + 1) * 2) {
        if (memo_grow(e) < 0)
            return -1;
    }
    size_t j = hash_of(obj) & e->mask;
    while (e->table[j].key != NULL) {
        if (e->table[j].key == obj) {
            Py_ssize_t found = e->table[j].index;
            if (e->building[found]) {
                PyObject *exc = PyObject_CallFunctionObjArgs(contains_itself_fn, obj, NULL);
                if (exc != NULL) {
                    PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
                    Py_DECREF(exc);
                }
                return -1;
            }
            long reach = depth + e->heights[found];
            if (reach > max_depth)
                return too_deep();
            if (reach > e->deepest)
                e->deepest = reach;
            if (put_u32(e, T_REF, found) < 0)
                return -1;
            return 1;
        }
        j = (j + 1) & e->mask;
    }
    if (e->count == e->slots && slots_grow(e) < 0)
        return -1;
    Py_INCREF(obj);
    e->objs[e->count] = obj;
    e->heights[e->count] = 0;
    e->building[e->count] = 0;
    e->table[j].key = obj;
    e->table[j].index = e->count;
    *index = e->count++;
    return 0;
}

static inline int enter(Enc *e, long depth, long *saved) {
    if (depth >= max_depth)
        return too_deep();
    *saved = e->deepest;
    e->deepest = depth + 1;
    return 0;
}

static inline void leave(Enc *e, Py_ssize_t index, long depth, long saved) {
    e->heights[index] = (int)(e->deepest - depth);
    if (saved > e->deepest)
        e->deepest = saved;
}

/* -- values ----------------------------------------------------------------------------------- */

static int write_value(Enc *e, PyObject *obj, long depth);

static int write_big_int(Enc *e, PyObject *obj) {
    PyObject *bits = PyObject_CallMethod(obj, "bit_length", NULL);
    if (bits == NULL)
        return -1;
    Py_ssize_t nbits = PyLong_AsSsize_t(bits);
    Py_DECREF(bits);
    if (nbits == -1 && PyErr_Occurred())
        return -1;
    Py_ssize_t size = (nbits + 8) / 8;
    if (size > max_int_bytes) {
        PyObject *msg = PyUnicode_FromFormat("an int of more than %ld bits", max_int_bytes * 8);
        if (msg != NULL) {
            PyErr_SetObject(Unsupported, msg);
            Py_DECREF(msg);
        }
        return -1;
    }
    PyObject *to_bytes = PyObject_GetAttrString(obj, "to_bytes");
    if (to_bytes == NULL)
        return -1;
    PyObject *args = Py_BuildValue("(ns)", size, "little");
    PyObject *kwargs = Py_BuildValue("{s:O}", "signed", Py_True);
    PyObject *raw = (args && kwargs) ? PyObject_Call(to_bytes, args, kwargs) : NULL;
    Py_DECREF(to_bytes);
    Py_XDECREF(args);
    Py_XDECREF(kwargs);
    if (raw == NULL)
        return -1;
    int r = put_u32(e, T_BIG_INT, size) < 0 ? -1 : put_bytes_object(e, raw);
    Py_DECREF(raw);
    return r;
}

static int write_int(Enc *e, PyObject *obj) {
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (overflow)
        return write_big_int(e, obj);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v >= 0 && v < 256) {
        if (RESERVE(e, 2) < 0)
            return -1;
        e->out[e->len] = T_SMALL_INT;
        e->out[e->len + 1] = (char)v;
        e->len += 2;
        return 0;
    }
    return put_u64(e, T_INT64, (uint64_t)v);
}

/* Write text under tag (Encoder._text): UTF-8, lone surrogates passed through. */
static int write_text(Enc *e, PyObject *obj, int tag) {
    Py_ssize_t size;
    const char *data = PyUnicode_AsUTF8AndSize(obj, &size);
    if (data != NULL) {
        if (put_u32(e, tag, size) < 0)
            return -1;
        return put(e, data, size);
    }
    if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError))
        return -1;
    PyErr_Clear();
    PyObject *raw = PyUnicode_AsEncodedString(obj, "utf-8", "surrogatepass");
    if (raw == NULL)
        return -1;
    int r = put_u32(e, tag, BYTES_SIZE(raw)) < 0 ? -1 : put_bytes_object(e, raw);
    Py_DECREF(raw);
    return r;
}

static int write_str(Enc *e, PyObject *obj, long depth) {
    Py_ssize_t index;
    if (STR_LENGTH(obj) >= memo_min_len) {
        int r = ref(e, obj, depth, &index);
        return r ? (r < 0 ? -1 : 0) : write_text(e, obj, T_LONG_STR);
    }
    return write_text(e, obj, T_STR);
}

static int write_bytes(Enc *e, PyObject *obj, long depth) {
    Py_ssize_t index, n = BYTES_SIZE(obj);
    int tag = T_BYTES;
    if (n >= memo_min_len) {
        int r = ref(e, obj, depth, &index);
        if (r)
            return r < 0 ? -1 : 0;
        tag = T_LONG_BYTES;
    }
    if (put_u64(e, tag, (uint64_t)n) < 0)
        return -1;
    return put_bytes_object(e, obj);
}

static int write_bytearray(Enc *e, PyObject *obj, long depth) {
    Py_ssize_t index;
    int r = ref(e, obj, depth, &index);
    if (r)
        return r < 0 ? -1 : 0;
    Py_ssize_t n = PyByteArray_Size(obj);
    if (put_u64(e, T_BYTEARRAY, (uint64_t)n) < 0)
        return -1;
    return put(e, PyByteArray_AsString(obj), n);
}

static int write_complex(Enc *e, PyObject *obj) {
    if (RESERVE(e, 17) < 0)
        return -1;
    e->out[e->len] = T_COMPLEX;
    f64(e->out + e->len + 1, PyComplex_RealAsDouble(obj));
    f64(e->out + e->len + 9, PyComplex_ImagAsDouble(obj));
    e->len += 17;
    return 0;
}

/* A value of a container, with the reference's fast paths (the same bytes as write()). */
static inline int write_item(Enc *e, PyObject *item, long child) {
    if (Py_IS_TYPE(item, &PyFloat_Type))
        return put_float(e, FLOAT_VALUE(item));
    Py_INCREF(item); /* the container may change under a registered type's to_data */
    int r = write_value(e, item, child);
    Py_DECREF(item);
    return r;
}

/* Encoder._items: tag, count, values; list items read by index as the list is now. */
static int write_items(Enc *e, int tag, PyObject *obj, long depth, Py_ssize_t index) {
    long saved = 0, child = depth + 1;
    if (enter(e, depth, &saved) < 0)
        return -1;
    if (PyList_CheckExact(obj)) {
        if (put_u32(e, tag, LIST_SIZE(obj)) < 0)
            return -1;
        for (Py_ssize_t i = 0; i < LIST_SIZE(obj); i++) {
            if (write_item(e, LIST_ITEM(obj, i), child) < 0)
                return -1;
        }
    } else if (PyTuple_CheckExact(obj)) {
        Py_ssize_t n = TUPLE_SIZE(obj);
        if (put_u32(e, tag, n) < 0)
            return -1;
        for (Py_ssize_t i = 0; i < n; i++) {
            if (write_item(e, TUPLE_ITEM(obj, i), child) < 0)
                return -1;
        }
    } else {
        Py_ssize_t n = PyObject_Size(obj);
        if (n < 0 || put_u32(e, tag, n) < 0)
            return -1;
        PyObject *it = PyObject_GetIter(obj), *item;
        if (it == NULL)
            return -1;
        while ((item = PyIter_Next(it)) != NULL) {
            int r = write_value(e, item, child);
            Py_DECREF(item);
            if (r < 0) {
                Py_DECREF(it);
                return -1;
            }
        }
        Py_DECREF(it);
        if (PyErr_Occurred())
            return -1;
    }
    leave(e, index, depth, saved);
    return 0;
}

/* Encoder._packed: a list of >= 8 floats or int64s as one block; 0 written, 1 not int64s. */
static int write_packed(Enc *e, PyObject *obj, long depth, Py_ssize_t index, int floats) {
    Py_ssize_t n = LIST_SIZE(obj), start = e->len;
    if (n > (PY_SSIZE_T_MAX - 5) / 8) {
        PyErr_NoMemory();
        return -1;
    }
    if (RESERVE(e, 5 + 8 * n) < 0)
        return -1;
    char *p = e->out + e->len + 5;
    for (Py_ssize_t i = 0; i < n; i++, p += 8) {
        PyObject *item = LIST_ITEM(obj, i);
        if (floats) {
            f64(p, FLOAT_VALUE(item));
        } else {
            int overflow;
            long long v = PyLong_AsLongLongAndOverflow(item, &overflow);
            if (overflow) {
                e->len = start;
                return 1; /* an int beyond int64: written one by one, as the reference does */
            }
            if (v == -1 && PyErr_Occurred())
                return -1;
            le64(p, (uint64_t)v);
        }
    }
    if (depth >= max_depth)
        return too_deep();
    if (put_u32(e, floats ? T_FLOATS : T_INT64S, n) < 0)
        return -1;
    e->len += 8 * n;
    e->heights[index] = 1; /* one level, like any list */
    if (depth + 1 > e->deepest)
        e->deepest = depth + 1;
    return 0;
}

static int write_list(Enc *e, PyObject *obj, long depth) {
    Py_ssize_t index, n = LIST_SIZE(obj);
    int r = ref(e, obj, depth, &index);
    if (r)
        return r < 0 ? -1 : 0;
    if (n >= PACKED_MIN) {
        int floats = 1, ints = 1;
        for (Py_ssize_t i = 0; i < n && (floats || ints); i++) {
            PyObject *item = LIST_ITEM(obj, i);
            floats &= Py_IS_TYPE(item, &PyFloat_Type);
            ints &= PyLong_CheckExact(item);
        }
        if (floats || ints) {
            r = write_packed(e, obj, depth, index, floats);
            if (r <= 0)
                return r;
        }
    }
    return write_items(e, T_LIST, obj, depth, index);
}

static int write_immutable(Enc *e, int tag, PyObject *obj, long depth) {
    Py_ssize_t index;
    int r = ref(e, obj, depth, &index);
    if (r)
        return r < 0 ? -1 : 0;
    e->building[index] = 1;
    if (write_items(e, tag, obj, depth, index) < 0)
        return -1;
    e->building[index] = 0;
    return 0;
}

static int write_pair(Enc *e, PyObject *key, PyObject *value, long child) {
    int r = write_value(e, key, child);
    return r < 0 ? r : write_item(e, value, child);
}

/* Encoder._pairs: tag, the defaultdict's factory code (prefix >= 0), count, (key, value) pairs. */
static int write_pairs(Enc *e, int tag, PyObject *obj, long depth, int prefix) {
    Py_ssize_t index;
    long saved = 0, child = depth + 1;
    int r = ref(e, obj, depth, &index);
    if (r)
        return r < 0 ? -1 : 0;
    if (enter(e, depth, &saved) < 0 || put_byte(e, tag) < 0 || (prefix >= 0 && put_byte(e, prefix) < 0))
        return -1;
    Py_ssize_t n = PyDict_Size(obj);
    if (put_u32(e, -1, n) < 0)
        return -1;
    if ((PyObject *)Py_TYPE(obj) == OrderedDict_type) {
        /* Its order is its own, not the dict's underneath: read through items(). */
        PyObject *items = PyObject_CallMethod(obj, "items", NULL);
        PyObject *it = items ? PyObject_GetIter(items) : NULL, *pair;
        Py_XDECREF(items);
        if (it == NULL)
            return -1;
        while ((pair = PyIter_Next(it)) != NULL) {
            r = write_pair(e, PyTuple_GetItem(pair, 0), PyTuple_GetItem(pair, 1), child);
            Py_DECREF(pair);
            if (r < 0) {
                Py_DECREF(it);
                return -1;
            }
        }
        Py_DECREF(it);
        if (PyErr_Occurred())
            return -1;
    } else {
        Py_ssize_t pos = 0;
        PyObject *key, *value;
        while (PyDict_Next(obj, &pos, &key, &value)) {
            Py_INCREF(key);
            Py_INCREF(value);
            r = write_pair(e, key, value, child);
            Py_DECREF(key);
            Py_DECREF(value);
            if (r < 0)
                return -1;
            if (PyDict_Size(obj) != n) {
                PyErr_SetString(PyExc_RuntimeError, "dictionary changed size during iteration");
                return -1;
            }
        }
    }
    leave(e, index, depth, saved);
    return 0;
}

static int write_defaultdict(Enc *e, PyObject *obj, long depth) {
    PyObject *code = PyObject_CallFunctionObjArgs(factory_code_fn, obj, NULL);
    if (code == NULL)
        return -1;
    long c = PyLong_AsLong(code);
    Py_DECREF(code);
    if (c == -1 && PyErr_Occurred())
        return -1;
    return write_pairs(e, T_DEFAULTDICT, obj, depth, (int)c);
}

static int write_deque(Enc *e, PyObject *obj, long depth) {
    Py_ssize_t index;
    long saved = 0;
    int r = ref(e, obj, depth, &index);
    if (r)
        return r < 0 ? -1 : 0;
    if (enter(e, depth, &saved) < 0)
        return -1;
    PyObject *maxlen = PyObject_GetAttrString(obj, "maxlen");
    if (maxlen == NULL)
        return -1;
    long long m = maxlen == Py_None ? -1 : PyLong_AsLongLong(maxlen);
    Py_DECREF(maxlen);
    if (m == -1 && PyErr_Occurred())
        return -1;
    Py_ssize_t n = PyObject_Size(obj);
    if (n < 0 || put_u64(e, T_DEQUE, (uint64_t)m) < 0 || put_u32(e, -1, n) < 0)
        return -1;
    PyObject *it = PyObject_GetIter(obj), *item;
    if (it == NULL)
        return -1;
    while ((item = PyIter_Next(it)) != NULL) {
        r = write_value(e, item, depth + 1);
        Py_DECREF(item);
        if (r < 0) {
            Py_DECREF(it);
            return -1;
        }
    }
    Py_DECREF(it);
    if (PyErr_Occurred())
        return -1;
    leave(e, index, depth, saved);
    return 0;
}

/* An array or tensor: its memo slot here, its head (and inline data) from array_data(). */
static int write_array(Enc *e, PyObject *obj, long depth) {
    Py_ssize_t index;
    int r = ref(e, obj, depth, &index);
    if (r)
        return r < 0 ? -1 : 0;
    PyObject *parts = PyObject_CallFunctionObjArgs(array_data_fn, obj, NULL);
    if (parts == NULL)
        return -1;
    PyObject *head = PyTuple_GetItem(parts, 0), *raw = PyTuple_GetItem(parts, 1);
    r = -1;
    if (head != NULL && raw != NULL && put_bytes_object(e, head) == 0) {
        if (raw == Py_None)
            r = 0;
        else if (put_u32(e, T_OUT_OF_BAND, PyList_Size(e->buffers)) == 0)
            r = PyList_Append(e->buffers, raw);
    }
    Py_DECREF(parts);
    return r;
}

/* A registered object (Encoder._registered): its slot, to_data, then its data one level down. */
static int write_registered(Enc *e, PyObject *registered, PyObject *obj, long depth) {
    Py_ssize_t index;
    long saved = 0;
    int r = ref(e, obj, depth, &index);
    if (r)
        return r < 0 ? -1 : 0;
    PyObject *parts = PyObject_CallFunctionObjArgs(registered_data_fn, registered, obj, NULL);
    if (parts == NULL)
        return -1;
    PyObject *head = PyTuple_GetItem(parts, 0), *data = PyTuple_GetItem(parts, 1);
    r = -1;
    if (head != NULL && data != NULL && enter(e, depth, &saved) == 0) {
        e->building[index] = 1;
        if (put_bytes_object(e, head) == 0 && write_value(e, data, depth + 1) == 0) {
            e->building[index] = 0;
            leave(e, index, depth, saved);
            r = 0;
        }
    }
    Py_DECREF(parts);
    return r;
}

/* A value of a type this file does not write: other() says what it is (Encoder._write_other). */
static int write_other(Enc *e, PyObject *obj, long depth) {
    PyObject *answer = PyObject_CallFunctionObjArgs(other_fn, obj, NULL);
    if (answer == NULL)
        return -1;
    PyObject *kind = PyTuple_GetItem(answer, 0), *payload = PyTuple_GetItem(answer, 1);
    int r = -1;
    if (kind != NULL && payload != NULL) {
        switch (PyLong_AsLong(kind)) {
        case K_LEAF:
            r = put_bytes_object(e, payload);
            break;
        case K_ARRAY:
            r = write_array(e, obj, depth);
            break;
        case K_REGISTERED:
            r = write_registered(e, payload, obj, depth);
            break;
        default:
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_SystemError, "callstate: other() gave an unknown kind");
        }
    }
    Py_DECREF(answer);
    return r;
}

static int write_value(Enc *e, PyObject *obj, long depth) {
    PyTypeObject *t = Py_TYPE(obj);
    if (t == &PyUnicode_Type)
        return write_str(e, obj, depth);
    if (t == &PyFloat_Type)
        return put_float(e, FLOAT_VALUE(obj));
    if (t == &PyLong_Type)
        return write_int(e, obj);
    if (t == &PyDict_Type)
        return write_pairs(e, T_DICT, obj, depth, -1);
    if (t == &PyList_Type)
        return write_list(e, obj, depth);
    if (t == &PyTuple_Type)
        return write_immutable(e, T_TUPLE, obj, depth);
    if (obj == Py_None)
        return put_byte(e, T_NONE);
    if (t == &PyBool_Type)
        return put_byte(e, obj == Py_True ? T_TRUE : T_FALSE);
    if (t == &PyBytes_Type)
        return write_bytes(e, obj, depth);
    if (t == &PySet_Type) {
        Py_ssize_t index;
        int r = ref(e, obj, depth, &index);
        return r ? (r < 0 ? -1 : 0) : write_items(e, T_SET, obj, depth, index);
    }
    if (t == &PyFrozenSet_Type)
        return write_immutable(e, T_FROZENSET, obj, depth);
    if (t == &PyByteArray_Type)
        return write_bytearray(e, obj, depth);
    if (t == &PyComplex_Type)
        return write_complex(e, obj);
    PyObject *type = (PyObject *)t;
    if (type == OrderedDict_type)
        return write_pairs(e, T_ORDERED_DICT, obj, depth, -1);
    if (type == Counter_type)
        return write_pairs(e, T_COUNTER, obj, depth, -1);
    if (type == defaultdict_type)
        return write_defaultdict(e, obj, depth);
    if (type == deque_type)
        return write_deque(e, obj, depth);
    return write_other(e, obj, depth);
}

/* -- the entry point -------------------------------------------------------------------------- */

static void enc_free(Enc *e) {
    for (Py_ssize_t i = 0; i < e->count; i++)
        Py_DECREF(e->objs[i]);
    PyMem_Free(e->objs);
    PyMem_Free(e->heights);
    PyMem_Free(e->building);
    PyMem_Free(e->table);
    PyMem_Free(e->out);
    Py_XDECREF(e->buffers);
}

/* encode(state) -> (stream, *buffers), as Encoder.encode. */
static PyObject *encode(PyObject *state) {
    Enc e;
    memset(&e, 0, sizeof e);
    PyObject *result = NULL;
    e.buffers = PyList_New(0);
    if (e.buffers != NULL && write_value(&e, state, 0) == 0) {
        Py_ssize_t n = PyList_Size(e.buffers);
        result = PyTuple_New(1 + n);
        PyObject *stream = result ? PyBytes_FromStringAndSize(e.out ? e.out : "", e.len) : NULL;
        if (stream == NULL) {
            Py_CLEAR(result);
        } else {
            PyTuple_SetItem(result, 0, stream);
            for (Py_ssize_t i = 0; i < n; i++) {
                PyObject *buffer = PyList_GetItem(e.buffers, i);
                Py_INCREF(buffer);
                PyTuple_SetItem(result, 1 + i, buffer);
            }
        }
    }
    enc_free(&e);
    return result;
}

static PyObject *module_encode(PyObject *self, PyObject *state) {
    (void)self;
    return encode(state);
}

static PyObject *encoder_encode(PyObject *self, PyObject *state) {
    (void)self;
    return encode(state);
}

static PyMethodDef encoder_methods[] = {
    {"encode", encoder_encode, METH_O,
     "Return the parts of ``state``; raise Unsupported for anything the codec cannot write."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot encoder_slots[] = {
    {Py_tp_doc, (void *)"Encodes one state at a time into ``(stream, *out-of-band buffers)``; reusable."},
    {Py_tp_methods, encoder_methods},
    {Py_tp_new, PyType_GenericNew},
    {0, NULL},
};

static PyType_Spec encoder_spec = {
    "callstate._encoding._cencode.Encoder", sizeof(PyObject), 0, Py_TPFLAGS_DEFAULT, encoder_slots,
};

static PyMethodDef module_methods[] = {
    {"encode", module_encode, METH_O, "encode(state) -> (stream, *buffers), as Encoder().encode(state)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_cencode",
    "The data codec's encoder, compiled: the same bytes as callstate._encoding._encoder.", -1,
    module_methods, NULL, NULL, NULL, NULL,
};

static int long_attr(PyObject *module, const char *name, long *out) {
    PyObject *value = PyObject_GetAttrString(module, name);
    if (value == NULL)
        return -1;
    *out = PyLong_AsLong(value);
    Py_DECREF(value);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

static int bind(void) {
    PyObject *tags = PyImport_ImportModule("callstate._encoding._tags");
    PyObject *encoder = PyImport_ImportModule("callstate._encoding._encoder");
    PyObject *collections = PyImport_ImportModule("collections");
    PyObject *u32 = NULL;
    int r = -1;
    if (tags && encoder && collections && long_attr(tags, "MAX_DEPTH", &max_depth) == 0 &&
        long_attr(tags, "MEMO_MIN_LEN", &memo_min_len) == 0 &&
        long_attr(tags, "MAX_INT_BYTES", &max_int_bytes) == 0 &&
        (Unsupported = PyObject_GetAttrString(tags, "Unsupported")) &&
        (u32 = PyObject_GetAttrString(encoder, "_TAG_U32")) && (U32_pack = PyObject_GetAttrString(u32, "pack")) &&
        (other_fn = PyObject_GetAttrString(encoder, "other")) &&
        (array_data_fn = PyObject_GetAttrString(encoder, "array_data")) &&
        (registered_data_fn = PyObject_GetAttrString(encoder, "registered_data")) &&
        (factory_code_fn = PyObject_GetAttrString(encoder, "factory_code")) &&
        (contains_itself_fn = PyObject_GetAttrString(encoder, "contains_itself")) &&
        (OrderedDict_type = PyObject_GetAttrString(collections, "OrderedDict")) &&
        (Counter_type = PyObject_GetAttrString(collections, "Counter")) &&
        (defaultdict_type = PyObject_GetAttrString(collections, "defaultdict")) &&
        (deque_type = PyObject_GetAttrString(collections, "deque")))
        r = 0;
    Py_XDECREF(u32);
    Py_XDECREF(tags);
    Py_XDECREF(encoder);
    Py_XDECREF(collections);
    return r;
}

PyMODINIT_FUNC PyInit__cencode(void) {
    if (deque_type == NULL && bind() < 0) /* bound once: deque_type is bound last */
        return NULL;
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL)
        return NULL;
    PyObject *type = PyType_FromSpec(&encoder_spec);
    if (type == NULL || PyModule_AddObject(module, "Encoder", type) < 0) {
        Py_XDECREF(type);
        Py_DECREF(module);
        return NULL;
    }
    if (PyModule_AddIntConstant(module, "MAX_DEPTH", max_depth) < 0 ||
        PyModule_AddIntConstant(module, "MEMO_MIN_LEN", memo_min_len) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
