/* CPython binding of the lightweight coding kernel (featcodec._kernel._coder).
 *
 * Buffers in, bytes out; sizes are checked here, the layout in lwcoder.c. The GIL is released
 * while the kernel runs, so threads (convert, Zarr) code in parallel. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "lwcoder.h"

static PyObject *raise_status(int status) {
    if (status == LW_NOMEM) return PyErr_NoMemory();
    if (status == LW_CORRUPT) PyErr_SetString(PyExc_ValueError, "corrupt");
    else PyErr_SetString(PyExc_ValueError, "bad arguments");
    return NULL;
}

/* parents / order: None or int32 buffers of `channels` entries. */
static int get_layout(lw_layout *l, int c, int h, int w, int n, int version, Py_buffer *parents,
                      Py_buffer *order, Py_buffer *reference) {
    l->channels = c;
    l->height = h;
    l->width = w;
    l->n_symbols = n;
    l->version = version;
    l->parents = NULL;
    l->order = NULL;
    l->reference = NULL;
    if (c < 1 || h < 1 || w < 1) {
        PyErr_SetString(PyExc_ValueError, "shape must be positive");
        return 0;
    }
    if (reference && reference->buf) {
        if ((size_t)reference->len != (size_t)c * h * w) {
            PyErr_SetString(PyExc_ValueError, "reference must hold one uint8 symbol per element");
            return 0;
        }
        l->reference = (const uint8_t *)reference->buf;
    }
    if (parents->buf) {
        if (parents->len != (Py_ssize_t)(4 * (size_t)c)) {
            PyErr_SetString(PyExc_ValueError, "parents must hold one int32 per channel");
            return 0;
        }
        l->parents = (const int32_t *)parents->buf;
    }
    if (order->buf) {
        if (order->len != (Py_ssize_t)(4 * (size_t)c)) {
            PyErr_SetString(PyExc_ValueError, "order must hold one int32 per channel");
            return 0;
        }
        l->order = (const int32_t *)order->buf;
    }
    int status = lw_check_layout(l);
    if (status != LW_OK) {
        raise_status(status);
        return 0;
    }
    return 1;
}

static void release(Py_buffer *a, Py_buffer *b, Py_buffer *c, Py_buffer *d) {
    Py_buffer *all[4] = {a, b, c, d};
    for (int i = 0; i < 4; i++)
        if (all[i] && all[i]->obj) PyBuffer_Release(all[i]);
}

/* encode(data, channels, height, width, n_symbols, version, parents, order, thresholds, cell_to_symbol
 *        [, reference, keep_symbols])
 *   data: float32 values (with thresholds and cell_to_symbol) or uint8 symbols (both None);
 *   reference: None or the previous sample's uint8 symbols (inter coding).
 *   -> (payload bytes, checksum of the symbols[, the symbols as bytes when keep_symbols]) */
static PyObject *py_encode(PyObject *self, PyObject *args) {
    Py_buffer data = {0}, parents = {0}, order = {0}, thresholds = {0}, cells = {0}, reference = {0};
    int c, h, w, n, version, keep = 0;
    if (!PyArg_ParseTuple(args, "y*iiiiiz*z*z*z*|z*p", &data, &c, &h, &w, &n, &version, &parents, &order,
                          &thresholds, &cells, &reference, &keep))
        return NULL;
    PyObject *result = NULL;
    lw_layout l;
    uint8_t *symbols = NULL, *out = NULL;
    size_t out_len = 0;
    if (!get_layout(&l, c, h, w, n, version, &parents, &order, &reference)) goto done;
    size_t count = (size_t)c * h * w;
    int quantizing = thresholds.buf != NULL;
    if (quantizing != (cells.buf != NULL) || (quantizing && (cells.len != 256 || thresholds.len % 4 ||
                                                             thresholds.len / 4 > LW_MAX_SYMBOLS - 1))) {
        PyErr_SetString(PyExc_ValueError, "thresholds (float32, < 16) and a 256-entry cell_to_symbol go together");
        goto done;
    }
    if ((size_t)data.len != (quantizing ? 4 * count : count)) {
        PyErr_SetString(PyExc_ValueError, "data size does not match the shape");
        goto done;
    }
    if (quantizing) {
        for (int i = 0; i < 256; i++)
            if (((const uint8_t *)cells.buf)[i] >= n) {
                PyErr_SetString(PyExc_ValueError, "cell_to_symbol names a symbol outside the alphabet");
                goto done;
            }
        symbols = (uint8_t *)malloc(count);
        if (!symbols) {
            PyErr_NoMemory();
            goto done;
        }
    }
    int status;
    uint32_t checksum;
    const uint8_t *coded;
    Py_BEGIN_ALLOW_THREADS
    if (quantizing)
        lw_quantize((const float *)data.buf, count, (const float *)thresholds.buf, (int)(thresholds.len / 4),
                    (const uint8_t *)cells.buf, symbols);
    coded = quantizing ? symbols : (const uint8_t *)data.buf;
    checksum = lw_checksum(coded, count);
    status = lw_encode(&l, coded, &out, &out_len);
    Py_END_ALLOW_THREADS
    if (status != LW_OK) {
        raise_status(status);
        goto done;
    }
    PyObject *payload = PyBytes_FromStringAndSize((const char *)out, (Py_ssize_t)out_len);
    if (payload && keep) {
        PyObject *kept = PyBytes_FromStringAndSize((const char *)coded, (Py_ssize_t)count);
        result = kept ? Py_BuildValue("(NIN)", payload, (unsigned int)checksum, kept) : NULL;
        if (!kept) Py_DECREF(payload);
    } else if (payload) {
        result = Py_BuildValue("(NI)", payload, (unsigned int)checksum);
    }
done:
    free(symbols);
    free(out);
    release(&data, &parents, &order, &thresholds);
    release(&cells, &reference, NULL, NULL);
    return result;
}

/* decode(payload, channels, height, width, n_symbols, version, parents, order, level_of_symbol
 *        [, reference, keep_symbols])
 *   -> (bytearray of uint8 symbols, or of float32 values when level_of_symbol is given, checksum
 *       [, the symbols as bytes when keep_symbols]) */
static PyObject *py_decode(PyObject *self, PyObject *args) {
    Py_buffer payload = {0}, parents = {0}, order = {0}, levels = {0}, reference = {0};
    int c, h, w, n, version, keep = 0;
    if (!PyArg_ParseTuple(args, "y*iiiiiz*z*z*|z*p", &payload, &c, &h, &w, &n, &version, &parents, &order, &levels,
                          &reference, &keep))
        return NULL;
    PyObject *result = NULL, *array = NULL;
    uint8_t *symbols = NULL;
    lw_layout l;
    if (!get_layout(&l, c, h, w, n, version, &parents, &order, &reference)) goto done;
    size_t count = (size_t)c * h * w;
    if (levels.buf && levels.len != 4 * (Py_ssize_t)n) {
        PyErr_SetString(PyExc_ValueError, "level_of_symbol must hold one float32 per symbol");
        goto done;
    }
    symbols = (uint8_t *)malloc(count);
    array = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)(levels.buf ? 4 * count : count));
    if (!symbols || !array) {
        if (!symbols) PyErr_NoMemory();
        goto done;
    }
    char *target = PyByteArray_AS_STRING(array);
    int status;
    uint32_t checksum = 0;
    Py_BEGIN_ALLOW_THREADS
    status = lw_decode(&l, (const uint8_t *)payload.buf, (size_t)payload.len, symbols);
    if (status == LW_OK) {
        checksum = lw_checksum(symbols, count);
        if (levels.buf) lw_dequantize(symbols, count, (const float *)levels.buf, n, (float *)target);
        else memcpy(target, symbols, count);
    }
    Py_END_ALLOW_THREADS
    if (status != LW_OK) {
        raise_status(status);
        goto done;
    }
    if (keep) {
        PyObject *kept = PyBytes_FromStringAndSize((const char *)symbols, (Py_ssize_t)count);
        result = kept ? Py_BuildValue("(OIN)", array, (unsigned int)checksum, kept) : NULL;
    } else {
        result = Py_BuildValue("(OI)", array, (unsigned int)checksum);
    }
done:
    Py_XDECREF(array);
    free(symbols);
    release(&payload, &parents, &order, &levels);
    if (reference.obj) PyBuffer_Release(&reference);
    return result;
}

/* cost(symbols, channels, height, width, n_symbols, version, parents, order) -> bytes of float64 bits per channel */
static PyObject *py_cost(PyObject *self, PyObject *args) {
    Py_buffer data = {0}, parents = {0}, order = {0};
    int c, h, w, n, version;
    if (!PyArg_ParseTuple(args, "y*iiiiiz*z*", &data, &c, &h, &w, &n, &version, &parents, &order)) return NULL;
    PyObject *result = NULL;
    lw_layout l;
    if (!get_layout(&l, c, h, w, n, version, &parents, &order, NULL)) goto done;
    if ((size_t)data.len != (size_t)c * h * w) {
        PyErr_SetString(PyExc_ValueError, "data size does not match the shape");
        goto done;
    }
    result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(8 * (size_t)c));
    if (!result) goto done;
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = lw_cost(&l, (const uint8_t *)data.buf, (double *)PyBytes_AS_STRING(result));
    Py_END_ALLOW_THREADS
    if (status != LW_OK) {
        Py_CLEAR(result);
        raise_status(status);
    }
done:
    release(&data, &parents, &order, NULL);
    return result;
}

static PyObject *py_checksum(PyObject *self, PyObject *args) {
    Py_buffer data = {0};
    if (!PyArg_ParseTuple(args, "y*", &data)) return NULL;
    uint32_t value = lw_checksum((const uint8_t *)data.buf, (size_t)data.len);
    PyBuffer_Release(&data);
    return PyLong_FromUnsignedLong(value);
}

static PyMethodDef methods[] = {
    {"encode", py_encode, METH_VARARGS, "Quantize (optionally) and encode a (C, H, W) map: (payload, checksum)."},
    {"decode", py_decode, METH_VARARGS, "Decode a payload to symbols or levels: (bytearray, checksum)."},
    {"cost", py_cost, METH_VARARGS, "Ideal code length of each channel in bits (float64 bytes)."},
    {"checksum", py_checksum, METH_VARARGS, "The kernel's 32-bit checksum of a byte buffer."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_coder", "The lightweight codec's coding kernel.", -1,
                                    methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__coder(void) {
    lw_init(); /* under the GIL, before any thread codes */
    return PyModule_Create(&module);
}
