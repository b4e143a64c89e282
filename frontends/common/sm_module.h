/*
 * Optional features as loadable modules: code that needs heavy libraries
 * (the MongoDB directory: libmongoc and its ICU, SASL...; the S3 backup
 * target: libcurl, GnuTLS, Kerberos..., libxml2) is built as a shared
 * module that a process maps only when the configuration asks for the
 * feature. A daemon with the default configuration never maps those
 * libraries (~50 of them, ~7-9 MB of private pages in sqlited).
 *
 * A module exports one symbol, a `const sm_module_desc`, whose `abi` must
 * equal SM_MODULE_ABI and whose `name` is the module's; `entry` points to
 * its constructor (a vtable filler, whose type the caller knows). The
 * module calls back into the process for a few engine and directory
 * helpers (eng_log, eng_malloc, ...): every executable that may load a
 * module exports exactly those (SM_MODULE_HOST_SYMBOLS in CMakeLists.txt).
 *
 * Where a module is looked for, first match wins:
 *   1. the directory of the running executable (/proc/self/exe): the
 *      build tree (build/bin/) and a flat installation;
 *   2. <that directory>/../lib/sealmail (SEALMAIL_MODULE_RELDIR, from the
 *      install bindir to the module dir): a relocated installation;
 *   3. SEALMAIL_MODULE_DIR, fixed at configure time (the install libdir,
 *      e.g. /usr/local/lib/sealmail).
 * Nothing comes from the environment. A loaded module stays loaded.
 */
#ifndef SM_MODULE_H
#define SM_MODULE_H

/* Bump when a module's entry point or the vtables it fills change. */
#define SM_MODULE_ABI 1

typedef struct sm_module_desc {
	unsigned abi;       /* SM_MODULE_ABI of the build that made it */
	const char *name;   /* "dir-mongo", "bk-s3" */
	void *entry;        /* the constructor, cast by the caller */
} sm_module_desc;

/* A module is built with hidden visibility: its descriptor is exported. */
#define SM_MODULE_EXPORT __attribute__((visibility("default")))

/* File names and descriptor symbols of the modules. */
#define SM_MODULE_DIR_MONGO "sealmail-dir-mongo.so"
#define SM_MODULE_DIR_MONGO_SYM "sealmail_dir_mongo_module"
#define SM_MODULE_BK_S3 "sealmail-bk-s3.so"
#define SM_MODULE_BK_S3_SYM "sealmail_bk_s3_module"

/*
 * Loads `file` (a bare file name) from the directories above and returns
 * its descriptor's entry in *entry_r. Thread-safe. On failure returns
 * ENG_ENOTFOUND (no such file anywhere) or ENG_EINVAL (found but not
 * loadable: a missing library, an old module) and logs one sentence that
 * names the feature (`what`), the file and the directories searched.
 */
int sm_module_load(const char *file, const char *symbol, const char *what,
		   void **entry_r);

#endif
